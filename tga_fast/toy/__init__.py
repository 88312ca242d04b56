"""A miniature world that runs the whole paper on a CPU in minutes (``tga-fast demo``).

A text LLM trained from scratch to refuse use-requests about toxic concepts, a CLIP-like vision encoder trained on
drawings of every concept, a real ``LlavaForConditionalGeneration`` assembled from them, the baseline and TGA
alignments from the same start, and the paper's measurements through tga_fast's own analysis, evaluation and
retrieval code. One concept per module:

    world.py      concepts, colours, captions, requests and answers (seeded)
    images.py     PIL drawings of the concepts with variation
    tokenizer.py  an offline word-level tokenizer with a chat template
    data.py       examples -> token tensors with spans (through ``encode_prompts``)
    text_llm.py   the text LLM and its training
    vision.py     the CLIP-like dual encoder and its contrastive training
    retrieve.py   retrieved texts (``tga_fast.retrieval.Index`` + the self-match rule)
    assemble.py   the LLaVA model and processor built from the parts
    alignment.py  the baseline and TGA alignments (``capture`` + ``tga_alignment_loss``)
    evaluate.py   DSR, false refusals and accuracy (``tga_fast.evaluation``)
    analyses.py   3A-3E (``tga_fast.analysis``) over the world's evaluation set
    cache.py      trained models cached by a hash of their configuration
    report.py     result.json, report.md and figures
    tried.py      the research log that led to the current design
    demo.py       ``run_demo(out, quick=False, seed=0)``

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
