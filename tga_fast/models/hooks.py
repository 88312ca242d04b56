"""Where ``hidden_states[k]`` can be read or written by a forward hook, and how a hook gets at the tensor.

Layer k in HF numbering (``hidden_states[k]``): 0 = the input of decoder block 1 (a forward *pre*-hook on
``decoder_layers[0]``), 1..N-1 = the output of decoder block k (a forward hook on ``decoder_layers[k - 1]``),
N = the final norm's output (a forward hook on the final norm). ``capture``, ``steer`` and ``skip_layers`` all
hook through these helpers, so they agree on the numbering.
"""

from __future__ import annotations

import torch
from torch import nn

from tga_fast.models.adapters import ModelParts

__all__ = ["hidden_from_pre_hook", "hidden_of", "layer_hook_points"]


def layer_hook_points(parts: ModelParts, layer: int) -> tuple[nn.Module, str]:
    """Where ``hidden_states[layer]`` (HF layer 0..N) can be read: ``(module, "pre" | "post")``."""
    if layer == 0:
        return parts.decoder_layers[0], "pre"
    if layer == parts.num_layers:
        return parts.final_norm, "post"
    return parts.decoder_layers[layer - 1], "post"


def hidden_from_pre_hook(args: tuple, kwargs: dict) -> torch.Tensor:
    """The ``[B, T, D]`` hidden states a decoder block is called with, from a ``with_kwargs=True`` pre-hook's
    ``(args, kwargs)`` (transformers passes them positionally or as ``hidden_states=``, depending on the version)."""
    return args[0] if args else kwargs["hidden_states"]


def hidden_of(output) -> torch.Tensor:
    """The ``[B, T, D]`` hidden states of a decoder block's output: a tensor (transformers 5) or the first item of
    a tuple (4.x)."""
    return output[0] if isinstance(output, (tuple, list)) else output
