"""HF vision-language models as tga_fast sees them: adapters (architectures as data), token spans, streaming
capture of pooled hidden states, the logit lens, interventions (knockout, steering, block skipping) that nest, and
``build_lvlm`` (a base LLM + a CLIP/SigLIP tower + a fresh projector as a LLaVA folder).

Numbering: a parameter named ``layers`` means HF layers 0..N (``hidden_states[k]``: ``capture``, ``steer``,
``logit_lens``); one named ``blocks`` means decoder blocks 1..N (block k produces ``hidden_states[k]``:
``knockout``, ``skip_layers``, ``attention_shares``).

No name exported here is also a submodule's name, so ``tga_fast.models.<module>`` is always the module.
"""

from tga_fast.models.adapters import (
    ARCHITECTURES,
    Architecture,
    ModelParts,
    resolve,
    supported_model_types,
    text_config_of,
)
from tga_fast.models.attention import AttentionModifier, BlockedKeys, ShareProbe, attention_modifiers, open_modifiers
from tga_fast.models.attention_probe import AttentionShares, attention_shares
from tga_fast.models.build import build_lvlm
from tga_fast.models.capture_hooks import Capture, StopForward, capture
from tga_fast.models.hooks import hidden_from_pre_hook, hidden_of, layer_hook_points
from tga_fast.models.interventions import knockout, skip_layers, steer
from tga_fast.models.lens import logit_lens, states_at
from tga_fast.models.processors import context_length, image_runs_of, image_token_id_of, is_processor, tokenizer_of
from tga_fast.models.spans import (
    Spans,
    char_ranges_to_token_spans,
    encode_with_spans,
    image_token_spans,
    locate_pieces,
)

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "AttentionModifier",
    "AttentionShares",
    "BlockedKeys",
    "Capture",
    "ModelParts",
    "ShareProbe",
    "Spans",
    "StopForward",
    "attention_modifiers",
    "attention_shares",
    "build_lvlm",
    "capture",
    "char_ranges_to_token_spans",
    "context_length",
    "encode_with_spans",
    "hidden_from_pre_hook",
    "hidden_of",
    "image_runs_of",
    "image_token_id_of",
    "image_token_spans",
    "is_processor",
    "knockout",
    "layer_hook_points",
    "locate_pieces",
    "logit_lens",
    "open_modifiers",
    "resolve",
    "skip_layers",
    "states_at",
    "steer",
    "supported_model_types",
    "text_config_of",
    "tokenizer_of",
]
