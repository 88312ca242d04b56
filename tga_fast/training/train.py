"""TGA training entry point: one function, ``train``, and ``main(argv)`` for every launcher.

    deepspeed --module tga_fast.training.train --deepspeed configs/deepspeed/zero3.json configs/stage2_finetune.json ...
    torchrun --nproc_per_node 8 -m tga_fast.training.train configs/stage1_pretrain.json --model_name_or_path ...
    tga-fast train configs/stage1_pretrain.json --model_name_or_path ... --data_path ... --output_dir ...

A first argument ending in .json/.yaml/.yml supplies defaults that later options override (see
``tga_fast.training.config.parse_config``). The DeepSpeed launcher adds ``--local_rank``, which
``TrainingArguments`` accepts. The run ends with ``<output_dir>/projector.safetensors`` (gathered under ZeRO-3),
the full model unless ``--save_full_model false``, and ``<output_dir>/log_history.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from tga_fast.training.config import DataConfig, ModelConfig, TGAConfig, TrainConfig, parse_config, resolve_target_layers

__all__ = ["main", "train"]

logger = logging.getLogger(__name__)


def _resume_point(config: TrainConfig) -> str | bool | None:
    """``resume_from_checkpoint``: a folder, or ``"last"`` for the newest checkpoint in ``output_dir`` (if any)."""
    value = config.resume_from_checkpoint
    if value in (None, ""):
        return None
    if value == "last":
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(config.output_dir) if Path(config.output_dir).is_dir() else None
        if last is None:
            logger.info("resume_from_checkpoint=last: no checkpoint in %s, starting fresh", config.output_dir)
        return last
    if not Path(value).is_dir():
        raise ValueError(f"TrainConfig.resume_from_checkpoint is not a checkpoint folder: {value}")
    return value


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
    ``skipped_records`` and ``projector`` (the exported path, on rank 0).
    """
    from transformers import set_seed

    from tga_fast.models import resolve
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.data import TGADataset
    from tga_fast.training.export import export_projector, load_projector
    from tga_fast.training.stages import freeze_for_stage, load_model
    from tga_fast.training.trainer import TGATrainer

    model_config.require_model()
    data_path = data_config.require_data()
    if model_config.load_in_4bit and train_config.deepspeed:
        raise ValueError("ModelConfig.load_in_4bit: a 4-bit LLM runs without DeepSpeed (one process or torchrun)")
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
    if model_config.projector_path:
        load_projector(model, model_config.projector_path)
    trainable = freeze_for_stage(model, model_config.train_llm)
    layers = resolve_target_layers(tga_config, resolve(model).num_layers)
    dataset = TGADataset(
        data_path,
        processor,
        image_folder=data_config.image_folder,
        max_length=data_config.max_length,
        use_retrieved=data_config.use_retrieved,
        progress=train_config.process_index == 0 and not train_config.disable_tqdm,
    )
    if len(dataset) == 0:
        raise ValueError(f"DataConfig.data_path: no valid record in {data_path} (skipped: {dataset.skipped[:5]})")
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
    result = trainer.train(resume_from_checkpoint=_resume_point(train_config))
    if train_config.save_full_model:
        trainer.save_model()
    projector = None
    if train_config.export_projector:
        projector = export_projector(trainer.model_wrapped, Path(train_config.output_dir) / "projector.safetensors")
    metrics = dict(result.metrics)
    metrics.update(trainable=trainable, target_layers=list(layers), skipped_records=len(dataset.skipped))
    metrics["projector"] = None if projector is None else str(projector)
    if trainer.is_world_process_zero():
        out = Path(train_config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return metrics


def main(argv: Sequence[str] | None = None) -> dict:
    """Parses argv (or ``sys.argv``) into the four configs and runs :func:`train`."""
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


if __name__ == "__main__":
    main()
