"""Streaming capture: per-layer pooled hidden states (and a logit lens), kept as the layers run.

``output_hidden_states=True`` keeps every layer's ``[B, T, D]`` (0.32 GB per 1200-token sequence at 7B scale);
the released code also forced ``output_attentions`` (eager attention and every ``T x T`` map). Here hooks on the
chosen layers pool each one's hidden states into ``[B, S, D]`` with ``segment_pool`` (or reduce them straight
to cosines with ``segment_cosine``) the moment the layer returns; nothing else is kept, the model keeps its fast
attention, and ``stop_after`` ends the forward after the last needed layer.

Layer k is ``hidden_states[k]`` in HF numbering: 0 = the decoder's input embeddings (image features merged),
1..N-1 = the output of decoder block k, N = the final norm's output (as HF returns it).

    with capture(model, layers=range(10, 19), spans=spans) as cap:
        model(**batch)
    cap.pooled            # [9, B, S, D], differentiable when grad is enabled
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from tga_fast.models.adapters import resolve
from tga_fast.models.hooks import hidden_from_pre_hook, hidden_of, layer_hook_points
from tga_fast.models.lens import logit_lens as lens_logits
from tga_fast.models.lens import states_at
from tga_fast.models.spans import Spans
from tga_fast.ops import segment_cosine, segment_pool

__all__ = ["Capture", "StopForward", "capture"]


class StopForward(Exception):
    """Raised by a capture hook after ``stop_after``; ``capture`` and ``Capture.run`` swallow it."""


@dataclass
class Capture:
    """What a capture keeps: filled as the forward runs, read after it.

    ``pooled``: ``[L, B, S, D]`` span means in the model's dtype (layers in the order given).
    ``cosines``: ``[L, B, S]`` fp32, when ``targets`` were given (then ``pooled`` is not kept).
    ``logits``: ``[L, B, V]`` fp32 logit lens at ``lens_positions``, when ``logit_lens=True``.
    """

    layers: tuple[int, ...]
    _pooled: dict[int, torch.Tensor] = field(default_factory=dict)
    _cosines: dict[int, torch.Tensor] = field(default_factory=dict)
    _logits: dict[int, torch.Tensor] = field(default_factory=dict)

    def _stacked(self, store: dict[int, torch.Tensor], what: str) -> torch.Tensor:
        missing = [k for k in self.layers if k not in store]
        if missing:
            raise RuntimeError(f"no {what} for layers {missing}: run the model's forward inside the capture first")
        return torch.stack([store[k] for k in self.layers])

    @property
    def pooled(self) -> torch.Tensor:
        return self._stacked(self._pooled, "pooled states")

    @property
    def cosines(self) -> torch.Tensor:
        return self._stacked(self._cosines, "cosines")

    @property
    def logits(self) -> torch.Tensor:
        return self._stacked(self._logits, "logit lens")

    def run(self, model: nn.Module, **inputs):
        """Calls ``model(**inputs)``; returns its output, or None when ``stop_after`` ended the forward early."""
        try:
            return model(**inputs)
        except StopForward:
            return None


@contextlib.contextmanager
def capture(
    model: nn.Module,
    layers: Iterable[int],
    spans: Spans | torch.Tensor,
    *,
    logit_lens: bool = False,
    lens_positions: torch.Tensor | None = None,
    stop_after: int | None = None,
    targets: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> Iterator[Capture]:
    """Hooks the chosen layers of an HF model for one forward pass.

    Args:
        model: a supported HF model (see ``tga_fast.models.supported_model_types``).
        layers: HF layer numbers (0..N), kept in the order given.
        spans: ``Spans`` or int64 ``[B, S, 2]`` token spans to pool.
        logit_lens: also keep ``lm_head(final_norm(h))`` at ``lens_positions`` (int64 ``[B]``, default the last
            position) for each layer; the final norm is not applied again at layer N.
        stop_after: end the forward (``StopForward``, swallowed here and by ``Capture.run``) once this layer ran.
            Statements after the model call inside the ``with`` block are then skipped: read the capture after it.
        targets: ``[L, B, D]``; keep ``segment_cosine(h, spans, targets[l])`` per layer instead of the means.

    The first forward inside the context is recorded; later calls of a hook (a second forward, or a layer
    recomputed by reentrant gradient checkpointing) are ignored, so nothing is captured twice. Hooks are removed
    on exit, also on error.
    """
    parts = resolve(model)
    layers = parts.check_layers(layers)
    if stop_after is not None:
        stop_after = parts.check_layers([stop_after], "stop_after")[0]
        if stop_after < max(layers):
            raise ValueError(f"stop_after={stop_after} would end the forward before layer {max(layers)}")
    span_tensor = spans.tensor if isinstance(spans, Spans) else spans
    if targets is not None and targets.shape[0] != len(layers):
        raise ValueError(f"targets has {targets.shape[0]} layers but {len(layers)} layers are captured")
    result = Capture(layers)
    in_lens: list[bool] = []  # non-empty while the logit lens runs (module calls from inside a hook)
    device_spans: dict[torch.device, torch.Tensor] = {}

    def spans_on(device: torch.device) -> torch.Tensor:
        if device not in device_spans:  # moved once per device, not once per layer
            device_spans[device] = span_tensor.to(device, non_blocking=True)
        return device_spans[device]

    def record(layer: int, hidden: torch.Tensor) -> None:
        if layer in result._pooled or layer in result._cosines:
            return
        local_spans = spans_on(hidden.device)
        if targets is None:
            result._pooled[layer] = segment_pool(hidden, local_spans)
        else:
            target = targets[layers.index(layer)].to(hidden.device)
            result._cosines[layer] = segment_cosine(hidden, local_spans, target, eps)
        if logit_lens:
            in_lens.append(True)
            try:
                last = states_at(hidden, lens_positions)[None]  # [1, B, D]
                result._logits[layer] = lens_logits(parts, last, [layer])[0]
            finally:
                in_lens.clear()

    def make_hook(layer: int, kind: str):
        keep = layer in layers  # the stop_after layer may only be there to stop

        def on_hidden(hidden: torch.Tensor) -> None:
            if in_lens:  # the logit lens itself calls the final norm: not a layer output
                return
            if keep:
                record(layer, hidden)
            if stop_after == layer:
                raise StopForward

        if kind == "pre":
            return lambda module, args, kwargs: on_hidden(hidden_from_pre_hook(args, kwargs))
        return lambda module, args, output: on_hidden(hidden_of(output))

    handles = []
    try:
        for layer in sorted(set(layers) | ({stop_after} if stop_after is not None else set())):
            module, kind = layer_hook_points(parts, layer)
            hook = make_hook(layer, kind)
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(hook))
        yield result
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()

