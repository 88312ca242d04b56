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
target layer over the aligned samples) are summed as detached tensors and converted to floats only when the
Trainer logs. Both passes go through the model the Trainer hands in (the DeepSpeed engine or DDP wrapper), so
ZeRO-3 gathers the parameters for the teacher pass too; the hooks, and the train/eval switch, act on the HF model
inside it (a DeepSpeed engine's own ``training`` flag never changes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import Trainer

from tga_fast.models import capture, resolve
from tga_fast.training.checkpoints import load_renamed_checkpoint
from tga_fast.training.conversation import IGNORE_INDEX
from tga_fast.training.config import TGAConfig
from tga_fast.training.lora import PROJECTOR_FILE, has_projector, is_peft_model
from tga_fast.training.loss import tga_alignment_loss
from tga_fast.training.stages import keep_4bit_layers_differentiable

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
    "hinge_mask",
)
# Optional among them (a collator of an older layout may leave it out): the hinge then follows has_retrieved.
_OPTIONAL_KEYS = ("hinge_mask",)


def suffix_token_types(labels: torch.Tensor) -> torch.Tensor:
    """A prefix-LM's ``token_type_ids`` (int64 ``[B, T]``) for a training batch: 0 on the prompt (the prefix, seen
    bidirectionally), 1 from the first answer token on (labels ``[B, T]``, -100 off the answers): PaliGemma's
    processor gives a ``suffix`` these types. Without them the whole conversation would be one bidirectional
    prefix and each answer token would see the ones it must predict."""
    return ((labels != IGNORE_INDEX).cumsum(dim=-1) > 0).to(torch.int64)


class TGATrainer(Trainer):
    """A ``Trainer`` for TGA: pass the ``TGAConfig`` and the resolved target layers (HF numbering, >= 1).

    Args:
        tga: the alignment settings (weights, schedule exponents, ``faithful_reference``, ``align``).
        target_layers: ``hidden_states[k]`` layers to align, e.g. ``range(10, 19)`` for a 32-layer LLM. Layer 0
            (the decoder's input: the projector's output among the text embeddings) is allowed with a warning.
        All other arguments are ``transformers.Trainer``'s.
    """

    def __init__(self, *args, tga: TGAConfig, target_layers: Sequence[int], **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        train_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if train_args is not None and train_args.remove_unused_columns:
            logger.warning("remove_unused_columns=True would drop the teacher batch and spans: set to False")
            train_args.remove_unused_columns = False
        super().__init__(*args, **kwargs)  # a 4-bit model trains through LoRA adapters (tga_fast.training.lora)
        if model is not None:
            keep_4bit_layers_differentiable(model)
        self.tga = tga
        parts = resolve(self.model)
        self.target_layers = parts.check_layers(target_layers, "target_layers")  # 0..num_layers
        if 0 in self.target_layers:
            logger.warning(
                "target_layers include 0, the decoder's input: an input-level alignment of the projector's output "
                "with the caption's token embeddings, not the paper's alignment of hidden states at the safety layers"
            )
        self._projector_trains = any(p.requires_grad for p in parts.projector.parameters()) if parts.projector else False
        # A prefix-LM family (PaliGemma): the prompt is the bidirectional prefix, the answer the causal suffix.
        self._prefix_lm = parts.architecture is not None and parts.architecture.attention_mask == "prefix"
        self._tga_sums: torch.Tensor | None = None  # [4 + L]: see _record
        self._tga_first_step = 0

    # ---- the loss ------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """``L = lm_loss_weight * L_CE + (L_pair + L_hinge)``, a scalar, for one micro-batch of the collator.

        ``inputs``: the :class:`~tga_fast.training.collator.TGACollator` batch of B samples: the model's inputs
        (``input_ids``/``attention_mask``/``labels`` ``[B, T]``, ``pixel_values`` for the N samples with an image)
        plus ``teacher_input_ids``/``teacher_attention_mask`` ``[B, Tt]``, ``student_spans`` ``[B, 2, 2]``,
        ``teacher_spans`` ``[B, 1, 2]``, ``align``, ``has_retrieved`` and ``hinge_mask`` bool ``[B]`` (popped before
        the forward; the hinge term is summed over ``hinge_mask``, or ``has_retrieved`` without it).
        A batch without ``pixel_values`` (or ``align=False`` in the config) gets the LM loss alone. The alignment
        terms are scaled like the LM loss for gradient accumulation; nothing here reads a device value.
        """
        extras = {key: inputs.pop(key) for key in EXTRA_KEYS if key in inputs}
        if self._prefix_lm and "labels" in inputs:
            inputs["token_type_ids"] = suffix_token_types(inputs["labels"])
        unused = self._unused_projector_term(model, inputs)  # before the forward: see its docstring
        hf_model = self.accelerator.unwrap_model(model)  # hooks and train/eval flags; the forward runs through `model`
        training = hf_model.training
        # The LM loss comes back already normalised over the whole accumulated batch when the model took
        # num_items_in_batch (then the Trainer does not divide by the accumulation steps): the per-batch
        # alignment mean is scaled to match.
        ga_scaled = self._loss_is_scaled_for_ga(num_items_in_batch)
        steps = getattr(self, "current_gradient_accumulation_steps", 1) if ga_scaled else 1
        # No image in the batch: nothing to align (a host-side key test, no device read).
        if not self.tga.align or "pixel_values" not in inputs:
            ce, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if self.tga.align and training:
                self._record(ce, None, None, None, ga_scaled)
            loss = ce + unused
            return (loss, outputs) if return_outputs else loss
        missing = [key for key in EXTRA_KEYS if key not in extras and key not in _OPTIONAL_KEYS]
        if missing:
            raise ValueError(f"TGA alignment needs the collator fields {missing} (use tga_fast's TGACollator)")
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
            hinge_mask=extras.get("hinge_mask", extras["has_retrieved"]).to(cosines.device, torch.bool),
            pair_weight=self.tga.pair_weight,
            hinge_weight=self.tga.hinge_weight,
            pair_power=self.tga.pair_power,
            hinge_power=self.tga.hinge_power,
            faithful_reference=self.tga.faithful_reference,
        )
        alignment = terms.total / steps
        loss = (ce if self.tga.lm_loss_weight == 1 else self.tga.lm_loss_weight * ce) + alignment.to(ce.dtype)
        if training:
            self._record(ce, terms, align, cosines[..., 0], ga_scaled)
        return (loss + unused, outputs) if return_outputs else loss + unused

    def _loss_is_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Whether the Trainer will leave this loss undivided by the accumulation steps (``training_step``'s rule in
        transformers 5.24, including its ``loss_is_scaled_for_ga`` override)."""
        override = getattr(self, "loss_is_scaled_for_ga", None)
        if override is not None:
            return bool(override)
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def _unused_projector_term(self, model: nn.Module, inputs: dict) -> torch.Tensor | float:
        """0 times the projector's output on a zero input when the batch has no image, else 0.

        On a text-only batch the projector takes no part in the graph. DDP with ``find_unused_parameters=False``
        (``TrainConfig``'s default) then fails on the missing gradients, and ZeRO reduces another set of gradients
        than on an image step. The zero-weighted call gives the projector a zero gradient, as one process gets;
        a module call, so that ZeRO-3 gathers its partitioned weights. Not under DDP with
        ``find_unused_parameters=True``: that DDP marks the projector unused after its forward itself, and a
        gradient arriving from outside the forward would mark it ready twice (an error). Processes must still
        agree on the modality of each step (``group_by_modality``): ZeRO-2 fills its buckets in gradient order and
        ZeRO-3 checks that every rank runs the same modules.
        """
        if "pixel_values" in inputs or not self._projector_trains:
            return 0.0
        if isinstance(model, nn.parallel.DistributedDataParallel) and model.find_unused_parameters:
            return 0.0
        projector = resolve(self.model).projector
        first = next(m for m in projector.modules() if isinstance(m, nn.Linear))
        weight = next(p for p in projector.parameters() if p.requires_grad)
        dummy = torch.zeros(1, first.in_features, device=weight.device, dtype=weight.dtype)
        return 0.0 * projector(dummy).float().sum()

    def _teacher_targets(self, model: nn.Module, hf_model: nn.Module, extras: dict) -> torch.Tensor:
        """``c [L, B, D]``: the caption tokens' mean hidden state per target layer, no grad, eval mode.

        ``model`` runs the forward (the DeepSpeed engine gathers ZeRO-3 partitions); ``hf_model`` (the HF model
        inside it) is switched to eval and every module's own train/eval flag is restored afterwards, also on error.
        Switching the engine instead would not do: its ``train``/``eval`` forward to the module but leave the
        engine's own ``training`` flag True, and ``model.train(True)`` would also wake modules the user had in eval.
        """
        modes = [(module, module.training) for module in hf_model.modules()]
        hf_model.eval()
        try:
            with torch.no_grad(), capture(
                hf_model, self.target_layers, extras["teacher_spans"], stop_after=max(self.target_layers)
            ) as cap:
                # A prefix-LM's caption prompt is all prefix, as the student's prompt is (token type 0).
                prefix = {"token_type_ids": torch.zeros_like(extras["teacher_input_ids"])} if self._prefix_lm else {}
                model(
                    input_ids=extras["teacher_input_ids"],
                    attention_mask=extras["teacher_attention_mask"],
                    use_cache=False,
                    **prefix,
                )
        finally:
            for module, mode in modes:
                module.training = mode
        return cap.pooled[:, :, 0]

    def _progress(self) -> float:
        """t = global_step / max_steps in [0, 1] (a host float the Trainer already holds: no sync).

        ``global_step`` counts optimizer steps, so every micro-batch of an accumulated step has the same t, and a
        resumed run continues from the checkpoint's ``global_step`` (restored before the first batch)."""
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

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The Trainer's save; a LoRA VLM's also writes ``projector.safetensors`` next to the adapter, which holds
        only the adapter's weights (the projector trains in full outside it). A text LLM has no projector."""
        super()._save(output_dir, state_dict)
        if is_peft_model(self.model) and has_projector(self.model):
            from tga_fast.training.export import export_projector

            export_projector(self.model, Path(output_dir or self.args.output_dir) / PROJECTOR_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Loads a Trainer checkpoint's weights under the model's own parameter names (see
        :mod:`tga_fast.training.checkpoints`: transformers 5.24 would silently skip every LLaVA weight). DeepSpeed
        and FSDP checkpoints, and mappings that are not pure renamings, keep transformers' path. A LoRA checkpoint
        (not DeepSpeed's, which holds every trainable weight) is the adapter, loaded by transformers, and the
        projector beside it."""
        model = self.model if model is None else model
        if is_peft_model(model) and not self.is_deepspeed_enabled and not self.is_fsdp_enabled:
            from tga_fast.training.export import load_projector

            super()._load_from_checkpoint(resume_from_checkpoint, model)
            if has_projector(model):
                load_projector(model, Path(resume_from_checkpoint) / PROJECTOR_FILE)
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not load_renamed_checkpoint(model, resume_from_checkpoint):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the same renaming as :meth:`_load_from_checkpoint`."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        if is_peft_model(self.model):
            from tga_fast.training.export import load_projector

            super()._load_best_model()
            if has_projector(self.model):
                load_projector(self.model, Path(self.state.best_model_checkpoint) / PROJECTOR_FILE)
        elif not load_renamed_checkpoint(self.model, self.state.best_model_checkpoint):
            super()._load_best_model()

    # ---- metrics -------------------------------------------------------------------------------------------

    def _record(self, ce, terms, align, image_cos, ga_scaled: bool) -> None:
        """Adds this micro-batch's detached values to the running sums (no host read); ``terms`` None for a batch
        without images (it adds its CE and nothing else).

        The sums, ``[4 + L]`` fp32: CE, pair, hinge (each as it enters the backward, so that over an optimizer step
        they add up to that step's loss terms), the number of aligned samples, and per target layer the sum of the
        image-caption cosines of the aligned samples (so text-only and toxic samples do not dilute the mean).
        """
        accumulation = getattr(self, "current_gradient_accumulation_steps", 1)
        values = torch.zeros(4 + len(self.target_layers), device=ce.device)
        values[0] = ce.detach().float() / (1 if ga_scaled else accumulation)
        if terms is not None:
            weights = align.to(image_cos.device, torch.float32)  # [B]
            values[1] = terms.pair.detach().float() / accumulation
            values[2] = terms.hinge.detach().float() / accumulation
            values[3] = weights.sum()
            values[4:] = (image_cos.detach().float() * weights).sum(dim=1)  # [L]
        if self._tga_sums is None:
            self._tga_sums, self._tga_first_step = values, self.state.global_step  # the window's first step
        else:
            self._tga_sums = self._tga_sums + values

    def _flush_metrics(self) -> dict[str, float]:
        """The means since the last log over all processes: the one place that reads values to the host.

        CE, pair and hinge: per optimizer step, averaged over processes (like the Trainer's ``loss``). Cosines: the
        mean over every aligned sample of every process; left out when the window had none.
        """
        sums = self._tga_sums
        if sums is None:
            return {}
        steps = max(1, self.state.global_step - self._tga_first_step)
        if self.args.world_size > 1:  # every process logs at the same steps, so the gather is symmetric
            sums = self.accelerator.gather(sums.to(self.args.device)).view(-1, sums.numel())
        else:
            sums = sums[None]
        losses = (sums[:, :3] / steps).mean(dim=0)  # [3]
        aligned = sums[:, 3].sum()
        cosines = sums[:, 4:].sum(dim=0) / aligned.clamp_min(1.0)  # [L]
        values = torch.cat([losses, aligned[None], cosines]).tolist()
        self._tga_sums = None
        logs = {"ce": values[0], "pair": values[1], "hinge": values[2]}
        if values[3] > 0:
            for layer, value in zip(self.target_layers, values[4:]):
                logs[f"cos/layer_{layer}"] = value
        return logs

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, with ``ce``, ``pair``, ``hinge`` and ``cos/layer_<k>`` added to each training line."""
        if "loss" in logs:  # a training log (evaluation logs say eval_loss)
            logs.update(self._flush_metrics())
        super().log(logs, start_time)
