"""HF vision-language models as tga_fast sees them: adapters (architectures as data), token spans, streaming
capture of pooled hidden states, and interventions (knockout, steering, layer skipping)."""

from tga_fast.models.adapters import ARCHITECTURES, Architecture, ModelParts, resolve, supported_model_types
from tga_fast.models.attention_probe import AttentionShares, attention_shares
from tga_fast.models.capture_hooks import Capture, StopForward, capture
from tga_fast.models.interventions import knockout, skip_layers, steer
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
    "AttentionShares",
    "attention_shares",
    "knockout",
    "skip_layers",
    "steer",
    "Capture",
    "ModelParts",
    "Spans",
    "StopForward",
    "capture",
    "char_ranges_to_token_spans",
    "encode_with_spans",
    "image_token_spans",
    "locate_pieces",
    "resolve",
    "supported_model_types",
]
