"""A miniature world that runs the whole paper on a CPU in minutes (``tga-fast demo``), as a pre-registered
experiment over several seeds.

Per seed: a text LLM trained from scratch to refuse use-requests about toxic concepts, a CLIP-like vision encoder
trained on drawings of every concept, a real ``LlavaForConditionalGeneration`` assembled from them, the protocol's
alignments trained from the same start by tga_fast's own trainer (with concepts, scenes and colour combinations
held out of every alignment), and the paper's measurements through tga_fast's analysis, evaluation and retrieval
code. One concept per module:

    protocol.json the pre-registered protocol (recipes, sizes, dev and report seeds); protocol.py reads and hashes it
    world.py      concepts, colours, phrasings, requests and answers; the seed's held-out split and the corpora
    images.py     PIL drawings of the concepts (glyphs drawn per seed) with variation
    tokenizer.py  an offline word-level tokenizer with a chat template
    data.py       examples -> token tensors with spans (the text LLM's training)
    text_llm.py   the text LLM and its training
    vision.py     the CLIP-like dual encoder and its contrastive training
    retrieve.py   retrieved texts (``tga_fast.retrieval.Index`` + the self-match rule; the irrelevant control)
    assemble.py   the LLaVA model and processor built from the parts
    alignment.py  training records and one stage through ``tga_fast.training.train`` (TGATrainer)
    evaluate.py   DSR, false refusals and accuracy per group (``tga_fast.evaluation.evaluate_dsr``)
    analyses.py   3A-3E (``tga_fast.analysis``) over the world's evaluation set
    cache.py      trained models cached by a hash of what determines them
    seed_run.py   one seed end to end -> ``seeds/<seed>/result.json``
    summary.py    across seeds: means, t intervals, per-seed values, gains over the baseline, targets
    report.py     result.json, report.md and figures
    tried.py      the research log that led to the current design (dev results only)
    demo.py       ``run_demo(out, quick=False, seeds=None, jobs=2)``

    from tga_fast.toy import run_demo
    result = run_demo("out/demo")
"""

__all__ = ["run_demo"]


def __getattr__(name: str):
    # run_demo imports transformers: only when asked for.
    if name == "run_demo":
        from tga_fast.toy.demo import run_demo

        return run_demo
    raise AttributeError(f"module 'tga_fast.toy' has no attribute {name!r}")
