"""The paper's five analyses (METHOD.md section 3), each a function over a model, its processor and evaluation
samples that returns a result dataclass (per-layer arrays, per-sample detail; the protocol of
:mod:`tga_fast.results`) whose ``save(out_dir)`` writes ``result.json``, ``samples.jsonl`` and ``figure.png``.
Each registers itself with its options dataclass in :mod:`tga_fast.analysis.registry`, the table the CLI runs.
``layers`` are HF layers 0..N (``hidden_states[k]``); decoder blocks 1..N (block k produces
``hidden_states[k]``) are called blocks: the knockout sweep's windows (:func:`block_windows`) and the attention
share's per-block values.

    from tga_fast.analysis import safety_layers
    result = safety_layers(model, processor, load_eval_set("eval.jsonl").samples)
    result.save("out/safety_layers")
"""

# In the paper's order (3A-3E): the registry, and so ``tga-fast analyze --help``, lists them as imported.
from tga_fast.analysis.safety_layers_3a import (
    SafetyLayersOptions,
    SafetyLayersResult,
    locate_safety_layers,
    safety_layers,
)
from tga_fast.analysis.attention_share_3b import AttentionShareResult, attention_share
from tga_fast.analysis.knockout_sweep_3c import KnockoutSweepOptions, KnockoutSweepResult, knockout_sweep
from tga_fast.analysis.modality_similarity_3d import (
    ModalitySimilarityOptions,
    ModalitySimilarityResult,
    clip_cosines,
    modality_similarity,
)
from tga_fast.analysis.steering_sweep_3e import SteeringSweepOptions, SteeringSweepResult, steering_sweep
from tga_fast.analysis.options import AnalysisOptions
from tga_fast.analysis.registry import ANALYSES, run_analysis
from tga_fast.analysis.results import AnalysisResult, block_windows, layer_windows

RESULTS = {name: entry.result for name, entry in ANALYSES.items()}

__all__ = [
    "ANALYSES",
    "AnalysisOptions",
    "AnalysisResult",
    "AttentionShareResult",
    "KnockoutSweepOptions",
    "KnockoutSweepResult",
    "ModalitySimilarityOptions",
    "ModalitySimilarityResult",
    "RESULTS",
    "SafetyLayersOptions",
    "SafetyLayersResult",
    "SteeringSweepOptions",
    "SteeringSweepResult",
    "attention_share",
    "block_windows",
    "clip_cosines",
    "knockout_sweep",
    "layer_windows",
    "locate_safety_layers",
    "modality_similarity",
    "run_analysis",
    "safety_layers",
    "steering_sweep",
]
