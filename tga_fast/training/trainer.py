"""``TGATrainer``: a ``transformers.Trainer`` whose loss adds the TGA alignment terms to the LM loss.

Per step (METHOD.md section 4), on the collator's batch:

1. teacher pass: no grad, eval mode (restored after), the caption alone in the chat template; ``capture`` keeps
   the caption tokens' mean at each target layer and ends the forward after the last one (``stop_after``), so the
   targets are ``c [L, B, D]``;
2. student pass: train mode, the multimodal prompt; ``capture(..., targets=c)`` reduces each target layer's
   ``[B, T, D]`` straight to ``cos [L, B, 2]`` (image span, retrieved-text span) with the fused ``segment_cosine``
   while the model computes its own LM loss;
3. ``L = L_CE + tga_alignment_loss(image_cos, retrieved_cos, progress=global_step / max_steps, ...)``.

Nothing in the loss reads a value back to the host: the logged metrics (CE, pair, hinge, mean image cosine per
target layer) are summed as detached tensors and converted to floats only when the Trainer logs. Both passes go
through the model the Trainer hands in (the DeepSpeed engine or DDP wrapper), so ZeRO-3 gathers the parameters
for the teacher pass too; the hooks sit on the HF model inside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import Trainer

from tga_fast.models import capture, resolve
from tga_fast.training.config import TGAConfig
from tga_fast.training.loss import tga_alignment_loss

__all__ = ["EXTRA_KEYS", "TGATrainer"]

logger = logging.getLogger(__name__)

# Collator fields that are not arguments of the model's forward (popped before it).
EXTRA_KEYS = (
    "teacher_input_ids",
    "teacher_attention_mask",
    "student_spans",
    "teacher_spans",
    "align",
    "has_retrieved",
)
_QUANTIZED_PARAMS = ("Params4bit", "Int8Params")


def _trains_only_unquantized(model: nn.Module) -> bool:
    """True when some parameters train and none of them is a bitsandbytes-quantised weight."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return bool(trainable) and not any(type(p).__name__ in _QUANTIZED_PARAMS for p in trainable)


class TGATrainer(Trainer):
    """A ``Trainer`` for TGA: pass the ``TGAConfig`` and the resolved target layers (HF numbering, >= 1).

    Args:
        tga: the alignment settings (weights, schedule exponents, ``faithful_reference``, ``align``).
        target_layers: ``hidden_states[k]`` layers to align, e.g. ``range(10, 19)`` for a 32-layer LLM.
        All other arguments are ``transformers.Trainer``'s.
    """

    def __init__(self, *args, tga: TGAConfig, target_layers: Sequence[int], **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        train_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if train_args is not None and train_args.remove_unused_columns:
            logger.warning("remove_unused_columns=True would drop the teacher batch and spans: set to False")
            train_args.remove_unused_columns = False
        # transformers (5.24) refuses a quantised model without PEFT adapters, assuming nothing else can train; here
        # the trainable part is the unquantised projector over a frozen 4-bit LLM. The flag it reads (an instance
        # attribute transformers sets at load) is lowered for that check only.
        hide = bool(getattr(model, "is_quantized", False)) and _trains_only_unquantized(model)
        if hide:
            model.is_quantized = False
        try:
            super().__init__(*args, **kwargs)
        finally:
            if hide:
                model.is_quantized = True
        self.tga = tga
        parts = resolve(self.model)
        self.target_layers = parts.check_layers(target_layers, "target_layers")
        if min(self.target_layers) < 1 or max(self.target_layers) > parts.num_layers:
            raise ValueError(
                f"target_layers {list(self.target_layers)} must be decoder outputs 1..{parts.num_layers} of this model"
            )
        self._projector_trains = any(p.requires_grad for p in parts.projector.parameters()) if parts.projector else False
        self._tga_sums: torch.Tensor | None = None  # [3 + L]: ce, pair, hinge (per-step sums), image cos per layer
        self._tga_micro_batches = 0
        self._tga_first_step = 0

    # ---- the loss ------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extras = {key: inputs.pop(key) for key in EXTRA_KEYS if key in inputs}
        unused = self._unused_projector_term(inputs)  # before the forward: see its docstring
        # The LM loss comes back already normalised over the whole accumulated batch when the model took
        # num_items_in_batch (then the Trainer does not divide by the accumulation steps): the per-batch
        # alignment mean is scaled to match.
        ga_scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        steps = getattr(self, "current_gradient_accumulation_steps", 1) if ga_scaled else 1
        # No image in the batch: nothing to align (a host-side key test, no device read).
        if not self.tga.align or "pixel_values" not in inputs:
            ce, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if self.tga.align and model.training:
                self._record(ce, None, None, None, ga_scaled)
            loss = ce + unused
            return (loss, outputs) if return_outputs else loss
        missing = [key for key in EXTRA_KEYS if key not in extras]
        if missing:
            raise ValueError(f"TGA alignment needs the collator fields {missing} (use tga_fast's TGACollator)")
        hf_model = self.accelerator.unwrap_model(model)  # where the hooks go; the forward runs through `model`
        targets = self._teacher_targets(model, hf_model, extras)
        with capture(hf_model, self.target_layers, extras["student_spans"], targets=targets) as cap:
            ce, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        cosines = cap.cosines  # [L, B, 2] fp32: image span, retrieved-text span
        align = extras["align"].to(cosines.device, torch.bool)
        terms = tga_alignment_loss(
            cosines[..., 0],
            cosines[..., 1],
            progress=self._progress(),
            toxic=~align,
            hinge_mask=extras["has_retrieved"].to(cosines.device, torch.bool),
            pair_weight=self.tga.pair_weight,
            hinge_weight=self.tga.hinge_weight,
            pair_power=self.tga.pair_power,
            hinge_power=self.tga.hinge_power,
            faithful_reference=self.tga.faithful_reference,
        )
        alignment = terms.total / steps
        loss = (ce if self.tga.lm_loss_weight == 1 else self.tga.lm_loss_weight * ce) + alignment.to(ce.dtype)
        if model.training:
            self._record(ce, terms, align, cosines[..., 0], ga_scaled)
        return (loss + unused, outputs) if return_outputs else loss + unused

    def _unused_projector_term(self, inputs: dict) -> torch.Tensor | float:
        """0 times the projector's output on a zero input when the batch has no image, else 0.

        On a text-only batch the projector takes no part in the graph. DDP (``find_unused_parameters=False``, the
        Trainer's choice under gradient checkpointing) then fails on the missing gradients, and ZeRO reduces
        another set of gradients than on an image step. The zero-weighted call gives the projector a zero
        gradient; a module call, so that ZeRO-3 gathers its partitioned weights. Processes must still agree on
        the modality of each step (``group_by_modality``): ZeRO-2 fills its buckets in gradient order and ZeRO-3
        checks that every rank runs the same modules.
        """
        if "pixel_values" in inputs or not self._projector_trains:
            return 0.0
        projector = resolve(self.model).projector
        first = next(m for m in projector.modules() if isinstance(m, nn.Linear))
        weight = next(p for p in projector.parameters() if p.requires_grad)
        dummy = torch.zeros(1, first.in_features, device=weight.device, dtype=weight.dtype)
        return 0.0 * projector(dummy).float().sum()

    def _teacher_targets(self, model: nn.Module, hf_model: nn.Module, extras: dict) -> torch.Tensor:
        """``c [L, B, D]``: the caption tokens' mean hidden state per target layer, no grad, eval mode."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), capture(
                hf_model, self.target_layers, extras["teacher_spans"], stop_after=max(self.target_layers)
            ) as cap:
                model(
                    input_ids=extras["teacher_input_ids"],
                    attention_mask=extras["teacher_attention_mask"],
                    use_cache=False,
                )
        finally:
            model.train(was_training)
        return cap.pooled[:, :, 0]

    def _progress(self) -> float:
        """t = global_step / max_steps in [0, 1] (a host float the Trainer already holds: no sync)."""
        if not self.state.max_steps:
            return 0.0
        return min(1.0, self.state.global_step / self.state.max_steps)

    # ---- data order ----------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        """:class:`~tga_fast.training.sampler.ModalityGroupedSampler` for a dataset with ``records`` (TGADataset)
        when ``group_by_modality`` is on; the Trainer's sampler otherwise."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        records = getattr(dataset, "records", None)
        if not getattr(self.args, "group_by_modality", False) or not records:
            return super()._get_train_sampler(train_dataset)
        from tga_fast.training.sampler import ModalityGroupedSampler

        group = self.args.per_device_train_batch_size * self.args.world_size
        return ModalityGroupedSampler([r.image is not None for r in records], group, seed=self.args.seed)

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Loads a Trainer checkpoint's weights under the model's own parameter names.

        transformers 5.24 saves checkpoints in the checkpoint layout (``save_pretrained`` reverts its key renaming:
        LLaVA's ``model.language_model.*`` is written as ``language_model.model.*``) but reloads them with
        ``load_state_dict(strict=False)``, so for LLaVA no key matches and the resumed run silently restarts from
        the initial weights. Here the renaming is undone, and any missing weight is an error. DeepSpeed and FSDP
        checkpoints keep their own path.
        """
        model = self.model if model is None else model
        path = Path(resume_from_checkpoint) / "model.safetensors"
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not path.is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file
        from transformers.core_model_loading import revert_weight_conversion

        own = model.state_dict()
        by_tensor = {id(tensor): name for name, tensor in own.items()}
        saved_names = {saved: by_tensor.get(id(tensor)) for saved, tensor in revert_weight_conversion(model, own).items()}
        if None in saved_names.values():  # a converter (not a renaming) in this model's mapping: transformers' path
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = load_file(str(path), device="cpu")
        state = {saved_names.get(name, name): tensor for name, tensor in saved.items()}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {resume_from_checkpoint} does not match the model: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )

    # ---- metrics -------------------------------------------------------------------------------------------

    def _record(self, ce, terms, align, image_cos, ga_scaled: bool) -> None:
        """Adds this micro-batch's detached values to the running sums (no host read); ``terms`` None for a
        batch without images (pair, hinge and cosines 0)."""
        # What enters the backward per micro-batch; summed over an optimizer step it is that step's loss term.
        accumulation = getattr(self, "current_gradient_accumulation_steps", 1)
        ce_part = ce.detach().float() / (1 if ga_scaled else accumulation)
        values = torch.zeros(3 + len(self.target_layers), device=ce.device)
        values[0] = ce_part
        if terms is not None:
            weights = align.float()
            layer_cos = (image_cos.detach() * weights).sum(dim=1) / weights.sum().clamp_min(1.0)  # [L]
            values[1] = terms.pair.detach().float() / accumulation
            values[2] = terms.hinge.detach().float() / accumulation
            values[3:] = layer_cos.float()
        if self._tga_sums is None:
            self._tga_sums, self._tga_first_step = values, self.state.global_step  # the window's first step
        else:
            self._tga_sums = self._tga_sums + values
        self._tga_micro_batches += 1

    def _flush_metrics(self) -> dict[str, float]:
        """The means since the last log, averaged over processes: the one place that reads values to the host."""
        sums = self._tga_sums
        if sums is None:
            return {}
        steps = max(1, self.state.global_step - self._tga_first_step)
        means = torch.cat([sums[:3] / steps, sums[3:] / self._tga_micro_batches])
        if self.args.world_size > 1:
            means = self.accelerator.gather(means.to(self.args.device)).view(-1, means.numel()).mean(dim=0)
        values = means.tolist()
        self._tga_sums, self._tga_micro_batches = None, 0
        logs = {"ce": values[0], "pair": values[1], "hinge": values[2]}
        for layer, value in zip(self.target_layers, values[3:]):
            logs[f"cos/layer_{layer}"] = value
        return logs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every process logs at the same steps, so the gather is symmetric
            logs.update(self._flush_metrics())
        super().log(logs, start_time)
