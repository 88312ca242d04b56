"""``run_demo(out)``: the miniature world's pre-registered experiment, every report seed, summarised.

    for each seed (parallel processes):  tga_fast.toy.seed_run.run_seed  ->  <out>/seeds/<seed>/result.json
    then:  summary across seeds (mean, t interval, per seed; seen and held-out concepts)  ->  <out>/result.json,
           <out>/report.md, figures

The seeds are the protocol's ``report`` seeds unless asked otherwise (``seeds="dev"``, or a list). Trained models
are cached per seed and stage under ``<cache>`` (default ``<out>/cache``), so a rerun only evaluates.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from tga_fast.toy.protocol import load_protocol

QUICK_SEEDS = [0]


def _seed_job(seed: int, out: str, quick: bool, cache: str, threads: int, ablation: str | None = None,
              llm: str | None = None) -> str:
    """One seed in a worker process (threads set before torch does any work); returns its result path."""
    import torch

    torch.set_num_threads(threads)
    from tga_fast.toy.seed_run import run_seed

    run_seed(seed, out, protocol=protocol_for(llm), quick=quick, cache=cache, progress=False, threads=threads,
             ablation=ablation)
    return str(Path(out) / "result.json")


def protocol_for(llm: str | None):
    """The world's protocol (``llm`` None) or the real-LLM world's (``"smollm2"``)."""
    if llm is None:
        return load_protocol()
    if llm != "smollm2":
        raise ValueError(f"llm must be None (the world's own text LLM) or 'smollm2', got {llm!r}")
    from tga_fast.real_llm import PROTOCOL_FILE

    return load_protocol(PROTOCOL_FILE)


def resolve_seeds(protocol, seeds, quick: bool) -> tuple[list[int], str]:
    """``(seeds, which)``: ``None`` -> the report seeds (the quick world's: ``QUICK_SEEDS``), ``"dev"``/``"report"``
    -> the protocol's set, a list -> those seeds (labelled ``"custom"``)."""
    if seeds is None:
        return (list(QUICK_SEEDS), "quick") if quick else (protocol.seeds("report"), "report")
    if isinstance(seeds, str):
        return protocol.seeds(seeds), seeds
    return [int(s) for s in seeds], "custom"


def run_demo(out, quick: bool = False, seeds=None, cache=None, jobs: int = 2, threads: int = 1,
             progress: bool = True, ablation: str | None = None, llm: str | None = None) -> dict:
    """Runs the protocol's seeds and writes ``result.json``, ``report.md`` and the figures into ``out``.

    Args:
        out: output folder; each seed's own result is in ``out/seeds/<seed>/``.
        quick: the tests' small world (same structure, fewer concepts and steps).
        seeds: None (the report seeds), ``"dev"``, ``"report"`` or a list of seeds.
        cache: trained-model cache (default ``<out>/cache``). jobs: seeds run at once, each in its own process
            with ``threads`` torch threads (1 job runs in this process).
        ablation: one of the protocol's pre-registered ablations (``one_image_token``), or None.
        llm: None (the world's text LLM, trained from scratch per seed) or ``"smollm2"`` (the real-LLM world:
            SmolLM2-135M-Instruct, safety-tuned once in this process before the seeds; ``tga_fast.real_llm``).
    Returns:
        the summary written to ``result.json``.
    """
    import json

    from tga_fast.results import environment
    from tga_fast.toy.report import save
    from tga_fast.toy.summary import summarize

    protocol = protocol_for(llm).ablation(ablation)
    seed_list, which = resolve_seeds(protocol, seeds, quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = str(Path(cache) if cache else out / "cache")
    start = time.perf_counter()
    shared = None
    if llm is not None:  # the LLM's safety tuning and text analyses, once, before the seeds read them
        from tga_fast.real_llm.safety_tuning import prepare_llm
        from tga_fast.real_llm.text_side import save_shared

        import torch

        torch.set_num_threads(max(1, jobs * threads))
        shared = prepare_llm(protocol, cache, out / "llm", quick=quick)
        save_shared(cache, quick, shared)
    paths = {seed: out / "seeds" / str(seed) for seed in seed_list}
    bar = tqdm(total=len(seed_list), desc=f"demo ({which} seeds {seed_list})", disable=not progress)
    if jobs <= 1 or len(seed_list) == 1:
        for seed in seed_list:
            _seed_job(seed, str(paths[seed]), quick, cache, threads, ablation, llm)
            bar.update(1)
    else:
        # spawn: a fresh interpreter per worker (fork would copy this process's torch thread pools).
        import multiprocessing

        with ProcessPoolExecutor(max_workers=min(jobs, len(seed_list)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_seed_job, seed, str(paths[seed]), quick, cache, threads, ablation, llm): seed
                       for seed in seed_list}
            for future in as_completed(futures):
                future.result()  # a failed seed stops the demo with its traceback
                bar.set_postfix_str(f"seed {futures[future]} done")
                bar.update(1)
    bar.close()
    per_seed = [json.loads((paths[seed] / "result.json").read_text()) for seed in seed_list]
    result = summarize(per_seed, protocol, which)
    if shared is not None:
        from tga_fast.real_llm.report import text_targets

        result["llm"] = shared
        result["targets"] = text_targets(shared) + result["targets"]
    result["wall_time_s"] = time.perf_counter() - start
    result["environment"] = {**environment(), "jobs": jobs, "threads_per_job": threads,
                             "cpu_count": os.cpu_count()}
    save(out, result, per_seed)
    return result


def rewrite_report(out) -> dict:
    """Rebuilds ``result.json``, ``report.md`` and the figures of ``out`` from its seeds' own results (after a change
    to the report's layout; nothing is trained or evaluated). The wall time and environment of the run are kept."""
    import json

    from tga_fast.toy.report import save
    from tga_fast.toy.summary import summarize

    out = Path(out)
    previous = json.loads((out / "result.json").read_text())
    per_seed = [json.loads((out / "seeds" / str(seed) / "result.json").read_text())
                for seed in previous["seeds"]["list"]]
    protocol = protocol_for(previous.get("llm") and "smollm2").ablation(per_seed[0]["protocol"].get("ablation"))
    if protocol.hash != per_seed[0]["protocol"]["hash"]:
        raise ValueError(f"{out} was run under protocol {per_seed[0]['protocol']['hash']}, this is {protocol.hash}")
    result = summarize(per_seed, protocol, previous["seeds"]["which"])
    if "llm" in previous:
        from tga_fast.real_llm.report import text_targets

        result["llm"] = previous["llm"]
        result["targets"] = text_targets(previous["llm"]) + result["targets"]
    result["wall_time_s"] = previous.get("wall_time_s")
    result["environment"] = previous.get("environment")
    save(out, result, per_seed)
    return result
