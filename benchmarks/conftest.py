"""Benchmark session: the copy bandwidth measured once, and a side-by-side summary of the providers.

Run with ``make bench`` (pytest-benchmark). Every group holds the providers of one (workload, shape, dtype,
mode); the summary printed at the end quotes medians, GB/s against the measured copy bandwidth, speed-ups over
``baseline`` and ``reference`` and peak memory, and is written to ``.benchmarks/summary.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TGA_FAST_STRICT", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from benchmarks import measure  # noqa: E402

_COPY_BANDWIDTH: dict[str, float] = {}


@pytest.fixture(scope="session")
def copy_bandwidth():
    """``fn(device) -> bytes/s`` of a plain tensor copy, measured once per device in this run."""

    def get(device: str) -> float:
        if device not in _COPY_BANDWIDTH:
            _COPY_BANDWIDTH[device] = measure.copy_bandwidth(device)
        return _COPY_BANDWIDTH[device]

    return get


def _rows(benchmarks):
    groups: dict[str, list] = {}
    for bench in benchmarks:
        if bench.stats is None or not getattr(bench.stats, "rounds", 0):
            continue
        groups.setdefault(bench.group, []).append(bench)
    lines = []
    for group, members in groups.items():
        medians = {b.extra_info.get("provider"): b.stats.median for b in members}
        first = min(medians, key=measure_order)  # the group's own baseline (baseline, plain, eager, ...)
        for bench in sorted(members, key=lambda b: measure_order(b.extra_info.get("provider"))):
            info, median = bench.extra_info, bench.stats.median
            bandwidth, percent = "-", "-"
            if "bytes" in info and "copy_gbps" in info:  # bandwidth-bound benches only
                gbps = info["bytes"] / median / 1e9
                bandwidth, percent = f"{gbps:.1f}", f"{100 * gbps / info['copy_gbps']:.0f}%"
            versus_first = f"{medians[first] / median:.2f}x ({first})"
            versus_reference = f"{medians['reference'] / median:.2f}x" if "reference" in medians else "-"
            peak = info.get("peak_mb")
            lines.append(
                f"| {group} | {info['provider']} | {median * 1e3:.2f} | {bandwidth} | {percent} "
                f"| {versus_first} | {versus_reference} | {'-' if peak is None else f'{peak:.0f}'} |"
            )
    return lines


def measure_order(provider):
    order = ("baseline", "plain", "eager", "reference", "cpp", "sdpa_causal", "capture", "hidden_states", "released", "triton")
    return order.index(provider) if provider in order else len(order)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    lines = _rows(session.benchmarks)
    if not lines:
        return
    copy = ", ".join(f"{d}: {v / 1e9:.1f} GB/s" for d, v in _COPY_BANDWIDTH.items())
    header = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; copy bandwidth (read + write) {copy}",
        "",
        "| group | provider | median ms | GB/s | % of copy | speed vs first | vs reference | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    text = "\n".join(header + lines) + "\n"
    terminalreporter.write_sep("=", "tga_fast benchmark summary")
    terminalreporter.write(text)
    out = Path(config.rootpath) / ".benchmarks" / "summary.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
