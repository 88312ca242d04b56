"""``tga-fast demo``: the miniature world's pre-registered experiment (see ``tga_fast.toy.demo``)."""

from __future__ import annotations

import argparse


def _seeds(value: str):
    """``report`` | ``dev`` | a comma-separated list of seeds."""
    from tga_fast.errors import UserError

    if value in ("report", "dev"):
        return value
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be 'report', 'dev' or a comma-separated list of integers, got {value!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UserError(f"--seeds must name seeds >= 0, got {value!r}")
    return seeds


def _run(args: argparse.Namespace) -> int:
    from tga_fast.errors import require_positive

    # Checked here, before minutes of training.
    require_positive(args.threads, "--threads")
    require_positive(args.jobs, "--jobs")
    seeds = None if args.seeds is None else _seeds(args.seeds)
    from tga_fast.toy.demo import run_demo

    if args.ablation is not None:
        from tga_fast.errors import UserError
        from tga_fast.toy.demo import protocol_for

        try:
            protocol_for(args.llm).ablation(args.ablation)
        except ValueError as error:
            raise UserError(f"--ablation: {error}") from None
    if args.llm is not None:
        from tga_fast.real_llm.smollm2 import gguf_path

        gguf_path()  # a UserError naming the install step, before anything runs
    out = args.out or ("out/demo-real" if args.llm else "out/demo")
    result = run_demo(out, quick=args.quick, seeds=seeds, cache=args.cache, jobs=args.jobs, threads=args.threads,
                      ablation=args.ablation, llm=args.llm)
    print(f"wrote {out}/report.md, result.json and figures in {result['wall_time_s']:.0f} s "
          f"(protocol v{result['protocol']['version']} {result['protocol']['hash']}, {result['seeds']['which']} seeds "
          f"{result['seeds']['list']})")
    for row in result["targets"]:
        print(f"  [{'x' if row['met'] else ' '}] {row['target']}: {row['measured']}")
    return 0


def add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo", help="the miniature world: the paper's analyses and alignments, pre-registered, over several seeds",
        description="Per seed: trains (or loads from the cache) a text LLM with a safety mechanism, a CLIP-like "
        "vision encoder and the protocol's alignments of the LLaVA built from them (tga_fast's own trainer), then "
        "measures DSR, false refusals and accuracy on seen and held-out concepts under three inference conditions, "
        "and the paper's layer analyses; writes report.md, result.json (means and t intervals over the seeds) and "
        "PNG figures.",
    )
    demo.add_argument("--out", default=None, help="output folder (default out/demo; out/demo-real with --llm)")
    demo.add_argument("--llm", default=None, choices=["smollm2"],
                      help="replace the world's text LLM by a real pretrained one: smollm2 (SmolLM2-135M-Instruct, "
                      "safety-tuned with LoRA on public data; needs `make .venv/.real`)")
    demo.add_argument("--seeds", default=None,
                      help="'report' (default: the protocol's report seeds), 'dev' (the seeds used while tuning) or "
                      "a comma-separated list")
    demo.add_argument("--quick", action="store_true", help="the small world used by the tests (one seed, ~1.5 min)")
    demo.add_argument("--cache", default=None, help="trained-model cache folder (default <out>/cache)")
    demo.add_argument("--ablation", default=None,
                      help="run one of the protocol's pre-registered ablations instead (one_image_token)")
    demo.add_argument("--jobs", type=int, default=2, help="seeds run at once, one process each (default 2)")
    demo.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per seed process (default 1: the world's matrices are tiny, and on a machine busy with "
        "other jobs OpenMP threads that wait for a core slow training down a hundredfold)",
    )
    demo.set_defaults(run=_run)
