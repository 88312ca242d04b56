"""TGA training entry point: one function, ``train``, and ``main(argv)`` for every launcher.

    deepspeed --module tga_fast.training.train --deepspeed configs/deepspeed/zero3.json configs/stage2_finetune.json ...
    torchrun --nproc_per_node 8 -m tga_fast.training.train configs/stage1_pretrain.json --model_name_or_path ...
    tga-fast train configs/stage1_pretrain.json --model_name_or_path ... --data_path ... --output_dir ...

A first argument ending in .json/.yaml/.yml supplies defaults that later options override (see
``tga_fast.training.config.parse_config``). The DeepSpeed launcher adds ``--local_rank``, which
``TrainingArguments`` accepts. The run ends with ``<output_dir>/projector.safetensors`` (gathered under ZeRO-3),
the full model unless ``--save_full_model false``, and ``<output_dir>/log_history.json``.

An ``output_dir`` that holds checkpoints belongs to a run: it is refused unless ``--resume_from_checkpoint`` (a
folder, or ``last``: the newest complete checkpoint there) or ``--overwrite_output_dir`` (remove them, start over)
says what to do with them. A user error (bad preset or option, missing file or folder, such an output_dir) is one
line on stderr and exit code 2, from ``tga-fast train`` and from the launchers alike.

A plain text LLM (a ``*ForCausalLM`` folder with its tokenizer) trains on text-only records with the LM loss
alone, in full (``--train_llm true``) or through LoRA (``--lora_r 16 --train_llm true``, ``--merge_lora true`` for
a merged plain folder): safety tuning of the LLM an LVLM is later built from. It needs ``--align false`` (no
image tokens to align) and writes no projector file (it has none).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Sequence

from tga_fast.errors import UserError
from tga_fast.training.config import DataConfig, ModelConfig, TGAConfig, TrainConfig, parse_config, resolve_target_layers

__all__ = ["launch", "main", "train"]

logger = logging.getLogger(__name__)
RUN_OUTPUTS = ("projector.safetensors", "log_history.json")  # what a finished run leaves besides checkpoints
_FIRST_REASONS = 5


def _resume_point(config: TrainConfig) -> str | None:
    """The checkpoint to resume from, after checking ``output_dir`` (see the module docstring).

    ``resume_from_checkpoint``: None (start fresh: ``output_dir`` must hold no checkpoint, or
    ``overwrite_output_dir`` removes them), a complete checkpoint folder, or ``"last"`` for the newest complete
    checkpoint of ``output_dir`` (newer incomplete ones are skipped and logged; none at all starts fresh).
    """
    from tga_fast.training.checkpoints import checkpoint_problems, find_checkpoints, last_complete_checkpoint

    value = config.resume_from_checkpoint
    output_dir = Path(config.output_dir)
    existing = find_checkpoints(output_dir)
    if value not in (None, "") and config.overwrite_output_dir:
        raise UserError("TrainConfig.overwrite_output_dir removes the checkpoints that resume_from_checkpoint would "
                        "continue from: give one of them")
    if value in (None, ""):
        if existing and not config.overwrite_output_dir:
            raise UserError(
                f"output_dir {output_dir} holds checkpoints of another run ({existing[-1].name}, {len(existing)} in "
                "all): pass --resume_from_checkpoint last to continue it, or --overwrite_output_dir to remove them "
                "and start over (or choose another --output_dir)"
            )
        if existing and config.process_index == 0:  # one process removes; the others only read the folder
            logger.warning("overwrite_output_dir: removing %d checkpoints of an earlier run in %s", len(existing),
                           output_dir)
            for folder in existing:
                shutil.rmtree(folder)
            for name in RUN_OUTPUTS:
                (output_dir / name).unlink(missing_ok=True)
        return None
    if value == "last":
        last, skipped = last_complete_checkpoint(output_dir)
        if last is None and skipped:
            raise UserError(
                f"resume_from_checkpoint=last: no complete checkpoint in {output_dir} ({skipped[0][0].name}: "
                f"{skipped[0][1]}); pass --overwrite_output_dir to start over"
            )
        if last is None:
            logger.info("resume_from_checkpoint=last: no checkpoint in %s, starting fresh", output_dir)
            return None
        logger.info("resuming from %s%s", last, f" (skipped {len(skipped)} incomplete)" if skipped else "")
        return str(last)
    problems = checkpoint_problems(value)
    if problems:
        raise UserError(f"TrainConfig.resume_from_checkpoint {value} is not a complete checkpoint: {'; '.join(problems)}")
    return value


def _zero_stage(deepspeed) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a JSON path or a dict)."""
    config = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    return (config.get("zero_optimization") or {}).get("stage")


def _export_merged(trainer, model_config: ModelConfig, train_config: TrainConfig) -> Path | None:
    """``<output_dir>/merged``: the adapter merged into the unquantised base (rank 0; the others wait)."""
    from tga_fast.training.export import export_merged
    from tga_fast.training.lora import save_adapter

    out = Path(train_config.output_dir)
    merged = None
    if trainer.is_world_process_zero():
        adapter = out if train_config.save_full_model else save_adapter(trainer.model, out / "adapter")
        merged = export_merged(model_config.model_name_or_path, adapter, out / "merged",
                               dtype="float32" if model_config.load_in_4bit else model_config.dtype)
    trainer.accelerator.wait_for_everyone()
    return merged


def _check_text_llm(model_config: ModelConfig, tga_config: TGAConfig) -> None:
    """A text LLM trains its own weights with the LM loss: the options that need an image or a projector, or that
    would leave nothing to train, stop the run before the data is read."""
    if not model_config.train_llm:
        raise UserError("ModelConfig.train_llm: a text-only LLM has no projector, so train_llm=False would train "
                        "nothing: set --train_llm true (full fine-tuning) or also --lora_r > 0 (LoRA)")
    if tga_config.align:
        raise UserError("TGAConfig.align: a text-only LLM has no image tokens to align: set --align false (the LM "
                        "loss only)")
    if model_config.projector_path:
        raise UserError("ModelConfig.projector_path: a text-only LLM has no projector to load it into")


def _require_images(dataset, data_path: str) -> None:
    """TGA trains the projector on image samples: with none left (a wrong ``--image_folder``, say) the run would
    export the initial projector unchanged, so it stops here with the count and the first reasons."""
    if any(record.image is not None for record in dataset.records):
        return
    reasons = "; ".join(f"{key}: {reason}" for key, reason in dataset.skipped[:_FIRST_REASONS])
    raise UserError(
        f"DataConfig.data_path: no image record of {data_path} survived ({len(dataset.skipped)} skipped, "
        f"{len(dataset.records)} text-only left); first reasons: {reasons or 'none (the file has no image record)'}"
    )


def train(
    model_config: ModelConfig,
    data_config: DataConfig,
    tga_config: TGAConfig,
    train_config: TrainConfig,
    *,
    callbacks: Sequence | None = None,
) -> dict:
    """Loads the model and data, trains with :class:`~tga_fast.training.trainer.TGATrainer`, saves and exports.

    Returns the Trainer's train metrics plus ``trainable`` (parameter counts per part), ``target_layers``,
    ``skipped_records``, ``text_replay_samples``, ``resumed_from`` and ``projector`` (the exported path, on rank 0;
    None for a text LLM, which has no projector: ``export_projector`` is then skipped, so its default needs no
    change), and ``merged`` after ``merge_lora``.

    A text LLM (no vision tower, no projector) trains with the LM loss alone on text-only records; it needs
    ``train_llm`` and ``align=False``.

    Raises:
        UserError: a bad option, file or folder, an ``output_dir`` in use, data without a surviving image record
            (a VLM) or with one (a text LLM), or a text LLM with ``train_llm=False``, ``align=True`` or a
            ``projector_path``.
    """
    from transformers import set_seed

    from tga_fast.models import resolve
    from tga_fast.models.processors import image_runs_of
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.conversation import check_content_order, set_chat_template
    from tga_fast.training.data import TGADataset
    from tga_fast.training.export import export_projector, load_projector
    from tga_fast.training.stages import freeze_for_stage, is_text_llm, load_model
    from tga_fast.training.trainer import TGATrainer

    model_config.require_model()
    data_path = data_config.require_data()
    if model_config.load_in_4bit and train_config.deepspeed:
        raise UserError("ModelConfig.load_in_4bit: a 4-bit LLM runs without DeepSpeed (one process or torchrun)")
    if model_config.lora_r and train_config.deepspeed and _zero_stage(train_config.deepspeed) == 3:
        raise UserError("ModelConfig.lora_r: LoRA runs with ZeRO-2 (configs/deepspeed/zero2.json), DDP or one process, "
                        "not ZeRO-3 (the adapters are small; the frozen LLM is not partitioned)")
    resume = _resume_point(train_config)  # before anything is loaded: a refused output_dir costs nothing
    set_seed(train_config.seed)
    if train_config.deepspeed:
        # TrainingArguments set up torch.distributed (on CPU without deepspeed.comm); ZeRO-3's zero.Init inside
        # from_pretrained reads the world size from deepspeed.comm, so attach it to that process group first.
        import deepspeed

        _ = train_config.device
        deepspeed.init_distributed()
    if model_config.dtype == "auto":  # TrainingArguments decide the precision (DeepSpeed keeps fp32 master weights)
        model_config.dtype = "bfloat16" if train_config.bf16 else "float16" if train_config.fp16 else "float32"
    model, processor = load_model(model_config)
    text_llm = is_text_llm(model)
    if text_llm:
        _check_text_llm(model_config, tga_config)
    if data_config.chat_template:
        set_chat_template(processor, data_config.chat_template)
    if data_config.use_retrieved:  # before any step: a template that moves the image first stops the run here
        check_content_order(processor, source=data_config.chat_template or model_config.model_name_or_path)
    if model_config.projector_path:
        load_projector(model, model_config.projector_path)
    if model_config.lora_r:
        from tga_fast.training.lora import apply_lora
        from tga_fast.training.stages import parameter_counts

        freeze_for_stage(model, train_llm=False)  # the LLM's own weights stay frozen: the adapters train
        model = apply_lora(model, model_config)
        trainable = parameter_counts(model)
    else:
        trainable = freeze_for_stage(model, model_config.train_llm)
    layers = resolve_target_layers(tga_config, resolve(model).num_layers)
    dataset = TGADataset(
        data_path,
        processor,
        image_folder=data_config.image_folder,
        max_length=data_config.max_length,
        use_retrieved=data_config.use_retrieved,
        toxic_images=data_config.toxic_images,
        progress=train_config.process_index == 0 and not train_config.disable_tqdm,
        image_runs=image_runs_of(model),  # the model's family decides, whatever processor class it came with
        cache_encoded=data_config.cache_encoded,
    )
    if len(dataset) == 0:
        raise UserError(f"DataConfig.data_path: no valid record in {data_path} ({len(dataset.skipped)} skipped; first "
                        f"reasons: {dataset.skipped[:_FIRST_REASONS]})")
    if not text_llm:  # a text LLM's records are text-only (TGADataset refuses image records with its tokenizer)
        _require_images(dataset, data_path)
    replayed = 0
    if data_config.text_replay_path:
        from tga_fast.training.replay import mix_text_replay

        replayed = mix_text_replay(dataset, data_config.text_replay_path, data_config.text_replay_ratio,
                                   seed=train_config.seed)
    trainer = TGATrainer(
        model=model,
        args=train_config,
        train_dataset=dataset,
        data_collator=TGACollator(processor),
        processing_class=processor,
        callbacks=list(callbacks or []),
        tga=tga_config,
        target_layers=layers,
    )
    result = trainer.train(resume_from_checkpoint=resume)
    if train_config.save_full_model:
        trainer.save_model()  # with LoRA: the adapter and projector.safetensors (TGATrainer._save)
    merged = None
    if model_config.lora_r and train_config.merge_lora:
        merged = _export_merged(trainer, model_config, train_config)
    projector = None
    if train_config.export_projector and text_llm:  # the default is True: no error for a text LLM, none to write
        logger.info("export_projector: skipped, a text-only LLM has no projector")
    elif train_config.export_projector:
        projector = export_projector(trainer.model_wrapped, Path(train_config.output_dir) / "projector.safetensors")
    metrics = dict(result.metrics)
    metrics.update(trainable=trainable, target_layers=list(layers), skipped_records=len(dataset.skipped),
                   text_replay_samples=replayed, resumed_from=resume)
    metrics["projector"] = None if projector is None else str(projector)
    if merged is not None:
        metrics["merged"] = str(merged)
    if trainer.is_world_process_zero():
        out = Path(train_config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return metrics


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses argv (or ``sys.argv``) into the four configs and runs :func:`train`; user errors are raised (the
    callers, ``tga-fast train`` and :func:`launch`, turn them into one line and exit code 2)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_config, data_config, tga_config, train_config = parse_config(argv)
    finished = False
    try:
        metrics = train(model_config, data_config, tga_config, train_config)
        if train_config.process_index == 0:
            print(json.dumps(metrics, indent=1, default=str))
        finished = True
    finally:
        _close_process_group(wait=finished)
    return metrics


def _close_process_group(wait: bool) -> None:
    """Ends the process group before the interpreter does, once every process got here: a gloo group torn down
    at exit can abort a process ("terminate called without an active exception") after a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def launch(argv: Sequence[str] | None = None) -> int:
    """The launchers' entry (``python -m`` / ``deepspeed --module`` / ``torchrun -m tga_fast.training.train``): 0 on
    success; a user error is one line on stderr (from every process: each one checked the same thing) and 2."""
    from tga_fast.cli import USER_ERRORS  # the one list of what a user can fix (the launcher is CLI code)

    try:
        main(argv)
    except USER_ERRORS as error:
        logger.debug("user error", exc_info=True)
        message = str(error).strip().splitlines() or [type(error).__name__]
        print(f"tga_fast.training.train: error: {message[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(launch())
