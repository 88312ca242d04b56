"""One analysis pass per sample: tga_fast against the released approach (issue 4's benchmark).

What a pass yields, for one toxic prompt: the logit lens at the last position for every layer 0..N (METHOD.md
3 A), the last token's head-averaged attention share on the toxic tokens at every block (3 B), and the span-pooled
hidden states of every layer (3 D). Providers, on the same random CPU-sized Llama (8 layers, D 512, 8 heads,
vocabulary 32000, fp32) and the same token ids, side by side at three lengths:

``baseline``  the released approach: eager attention with ``output_attentions=True`` and
              ``output_hidden_states=True`` (every ``[H, T, T]`` map and every ``[T, D]`` state kept, logits at every
              position), then Python post-processing per layer (norm + LM head on the last row, slices of the
              attention rows summed over the toxic positions, span means).
``tga_fast``  one SDPA forward inside ``capture`` and ``attention_shares`` together: the pooled states and the last
              position's state taken as each layer returns, the share from the ``attention_share`` op on the last
              row only; then one LM-head matmul over the N+1 last-position states for the whole lens (what
              ``tga_fast.analysis.safety_layers`` does; the model's own head runs on one position,
              ``logits_to_keep=1``).
``plain``     a plain SDPA forward with ``logits_to_keep=1``: the floor tga_fast's pass is compared with.

The correctness check (tga_fast equals the baseline's lens, shares and pooled states) runs before timing.
``peak_mb`` is the peak RSS growth of one pass in a fresh process (``benchmarks.measure.peak_memory_here``).
The issue's target: tga_fast at least 3x faster and with at least 5x lower peak memory than ``baseline``, the gap
growing with the sequence length.

    python -m pytest benchmarks/bench_analysis.py -o python_files='bench_*.py' --benchmark-only
    python -m benchmarks.bench_analysis --provider baseline --seq-len 2048     # the peak-memory probe alone
    python -m benchmarks.bench_analysis --interleaved 5 --lengths 512 2048     # providers timed in turn per round
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.measure import ROOT, peak_memory_here
from tga_fast.models import attention_shares, capture, logit_lens, resolve

PROVIDERS = ("baseline", "tga_fast", "plain")
LENGTHS = (512, 2048, 4096)
ROUNDS = {512: 5, 2048: 3, 4096: 2}
LAYERS, DIM, HEADS, VOCAB = 8, 512, 8, 32000
TOXIC = (40, 48)  # the toxic words' token positions [start, end) inside the request


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=DIM, intermediate_size=1376, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval().to(torch.float32).requires_grad_(False)


_MODEL: list[torch.nn.Module] = []


def shared_model() -> torch.nn.Module:
    if not _MODEL:
        _MODEL.append(build())
    return _MODEL[0]


def inputs(seq_len: int):
    """``(input_ids [1, T], toxic bool [1, T], spans [1, 3, 2])``: a request whose toxic words sit early, and the
    spans pooled (an image-sized block, the rest of the request, the question)."""
    ids = torch.randint(0, VOCAB, (1, seq_len), generator=torch.Generator().manual_seed(1))
    toxic = torch.zeros(1, seq_len, dtype=torch.bool)
    toxic[0, TOXIC[0] : TOXIC[1]] = True
    half = seq_len // 2
    spans = torch.tensor([[[35, 95], [100, 100 + half], [100 + half, seq_len - 4]]])
    return ids, toxic, spans


def baseline_pass(model, ids, toxic, spans):
    """The released approach: everything out of an eager forward, then a Python loop per layer."""
    parts = resolve(model)
    out = model(input_ids=ids, use_cache=False, output_attentions=True, output_hidden_states=True)
    toxic_positions = toxic[0].nonzero()[:, 0].tolist()  # host ints, as the released scripts index
    span_list = spans[0].tolist()
    lens, shares, pooled = [], [], []
    for k, hidden in enumerate(out.hidden_states):  # N+1 x [1, T, D]
        last = hidden[0, -1]
        if k < parts.num_layers:  # hidden_states[N] already has the final norm
            last = parts.final_norm(last)
        lens.append(torch.softmax(parts.lm_head(last).float(), dim=-1))
        pooled.append(torch.stack([hidden[0, start:end].mean(dim=0) for start, end in span_list]))
    for attention in out.attentions:  # N x [1, H, T, T]
        row = attention[0, :, -1, :]  # [H, T]
        shares.append(row[:, toxic_positions].sum(dim=-1).mean())
    return torch.stack(lens), torch.stack(shares), torch.stack(pooled), out


def tga_fast_pass(model, ids, toxic, spans):
    """One SDPA forward: pooled states (and the last position's state, a one-token span) from capture, shares from
    the attention_share op; then one LM-head matmul for the lens of every layer (as ``safety_layers`` does)."""
    parts = resolve(model)
    layers = list(range(parts.num_layers + 1))
    last = ids.shape[1] - 1
    with_last = torch.cat([spans, torch.tensor([[[last, last + 1]]])], dim=1)  # [1, S+1, 2]
    with capture(model, layers, with_last) as cap, attention_shares(model, toxic, torch.tensor([[last]])) as probe:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    pooled = cap.pooled[:, 0]  # [N+1, S+1, D]
    lens = logit_lens(parts, pooled[:, -1:], layers)[:, 0].softmax(dim=-1)  # [N+1, V]
    return lens, probe.share[:, 0, :, 0].mean(dim=-1), pooled[:, :-1]


def workload(provider: str, seq_len: int):
    """``run()``: one analysis pass of ``provider`` at length ``seq_len``; returns what it keeps."""
    model = shared_model()
    ids, toxic, spans = inputs(seq_len)
    attention = "eager" if provider == "baseline" else "sdpa"

    def run():
        if model.config._attn_implementation != attention:  # one model serves every provider
            model.set_attn_implementation(attention)
        with torch.no_grad():
            if provider == "baseline":
                return baseline_pass(model, ids, toxic, spans)
            if provider == "tga_fast":
                return tga_fast_pass(model, ids, toxic, spans)
            return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits

    return run


def check(seq_len: int) -> None:
    """tga_fast's lens, shares and pooled states equal the released approach's (eager fp32 vs SDPA fp32)."""
    lens, shares, pooled, _ = workload("baseline", seq_len)()
    fast = workload("tga_fast", seq_len)()
    torch.testing.assert_close(fast[0], lens, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast[1], shares, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast[2], pooled, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seq_len", LENGTHS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_analysis_pass(benchmark, provider, seq_len):
    if provider == "tga_fast":
        check(seq_len)
    run = workload(provider, seq_len)
    benchmark.group = f"analysis pass llama-{LAYERS}x{DIM} V={VOCAB} T={seq_len}"
    benchmark.extra_info.update(provider=provider)
    benchmark.pedantic(run, rounds=ROUNDS[seq_len], warmup_rounds=1)
    benchmark.extra_info["peak_mb"] = peak_memory(provider, seq_len)


def peak_memory(provider: str, seq_len: int) -> float | None:
    if os.environ.get("TGA_FAST_BENCH_MEMORY", "1") == "0":
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, "-m", "benchmarks.bench_analysis", "--provider", provider, "--seq-len", str(seq_len)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20


def interleaved(lengths, rounds: int) -> list[str]:
    """Medians with the providers run in turn within each round, so that a change of machine load hits them all
    alike (the pytest run times each provider's rounds back to back). Returns the table's rows."""
    import statistics
    import time

    rows = []
    for seq_len in lengths:
        check(seq_len)
        runs = {provider: workload(provider, seq_len) for provider in PROVIDERS}
        times: dict[str, list[float]] = {provider: [] for provider in PROVIDERS}
        for provider in PROVIDERS:  # warm-up
            runs[provider]()
        for _ in range(rounds):
            for provider in PROVIDERS:
                start = time.perf_counter()
                runs[provider]()
                times[provider].append(time.perf_counter() - start)
        base = statistics.median(times["baseline"])
        for provider in PROVIDERS:
            median = statistics.median(times[provider])
            rows.append(f"| T={seq_len} | {provider} | {median * 1e3:.0f} | {base / median:.2f}x |")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="peak memory of one analysis pass in a fresh process, or "
                                     "--interleaved timings")
    parser.add_argument("--provider", choices=PROVIDERS)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--interleaved", type=int, metavar="ROUNDS", help="time all providers in turn")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    args = parser.parse_args()
    if args.interleaved:
        print("| length | provider | median ms | speed vs baseline |\n|---|---|---|---|")
        print("\n".join(interleaved(args.lengths, args.interleaved)))
    else:
        if args.provider is None or args.seq_len is None:
            parser.error("--provider and --seq-len are required without --interleaved")
        print(json.dumps({"peak_bytes": peak_memory_here(workload(args.provider, args.seq_len), "cpu")}))
