"""The paper's five analyses (METHOD.md section 3), each a function over a model, its processor and evaluation
samples that returns a result dataclass (per-layer arrays, per-sample detail, ``to_json``/``from_json``) whose
``save(out_dir)`` writes ``result.json`` and ``figure.png``. ``layers`` are HF layers 0..N (``hidden_states[k]``);
decoder blocks 1..N (block k produces ``hidden_states[k]``) are called blocks: the knockout sweep's windows
(:func:`block_windows`) and the attention share's per-block values.

    from tga_fast.analysis import safety_layers
    result = safety_layers(model, processor, load_eval_set("eval.jsonl").samples)
    result.save("out/safety_layers")
"""

from tga_fast.analysis.attention_share_3b import AttentionShareResult, attention_share
from tga_fast.analysis.knockout_sweep_3c import KnockoutSweepResult, knockout_sweep
from tga_fast.analysis.modality_similarity_3d import ModalitySimilarityResult, clip_cosines, modality_similarity
from tga_fast.analysis.results import AnalysisResult, block_windows, layer_windows
from tga_fast.analysis.safety_layers_3a import SafetyLayersResult, locate_safety_layers, safety_layers
from tga_fast.analysis.steering_sweep_3e import SteeringSweepResult, steering_sweep

RESULTS = {
    cls.analysis: cls
    for cls in (SafetyLayersResult, AttentionShareResult, KnockoutSweepResult, ModalitySimilarityResult,
                SteeringSweepResult)
}

__all__ = [
    "AnalysisResult",
    "AttentionShareResult",
    "KnockoutSweepResult",
    "ModalitySimilarityResult",
    "RESULTS",
    "SafetyLayersResult",
    "SteeringSweepResult",
    "attention_share",
    "block_windows",
    "clip_cosines",
    "knockout_sweep",
    "layer_windows",
    "locate_safety_layers",
    "modality_similarity",
    "safety_layers",
    "steering_sweep",
]
