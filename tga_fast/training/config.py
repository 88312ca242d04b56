"""Training configuration: four dataclasses parsed by ``HfArgumentParser`` from argv or a JSON/YAML file.

``ModelConfig`` (what to load and what trains), ``DataConfig`` (LLaVA-format data), ``TGAConfig`` (the alignment
terms of METHOD.md section 4) and ``TrainConfig`` (``transformers.TrainingArguments`` plus two export options).
``TrainingArguments`` stays the one source of truth for batch size, precision and schedule: the DeepSpeed JSONs
in ``configs/deepspeed`` say ``"auto"`` for those.

    model, data, tga, train = parse_config(["configs/stage1_pretrain.json", "--data_path", "caps.jsonl"])

A file given first supplies defaults; options after it override them. Every ``__post_init__`` raises a
``ValueError`` that names the field (``TGAConfig.pair_weight must be >= 0, got -1``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

from transformers import HfArgumentParser, TrainingArguments

from tga_fast.errors import UserError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "PAPER_LAYERS",
    "TGAConfig",
    "TrainConfig",
    "default_target_layers",
    "parse_config",
    "resolve_target_layers",
]

logger = logging.getLogger(__name__)

# The released code trains hidden_states[10..18] of 32-layer 7B models (METHOD.md 3A / 4).
PAPER_LAYERS = (10, 18)
PAPER_DEPTH = 32
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _fail(owner: str, name: str, message: str) -> None:
    raise UserError(f"{owner}.{name} {message}")


@dataclass
class ModelConfig:
    """What is loaded and what trains. The vision tower is always frozen (METHOD.md 4)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "local Hugging Face folder of a LLaVA-style model (save_pretrained layout)"}
    )
    train_llm: bool = field(
        default=False,
        metadata={"help": "stage 2: train the LLM with the projector; False: projector only (stage 1, or stage 2's "
                  "option); a text-only LLM (no projector) needs True"},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2"})
    dtype: str = field(
        default="auto",
        metadata={"help": f"weights dtype at load, one of {DTYPES}; auto: bfloat16 with --bf16, float16 with --fp16, else float32"},
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "bitsandbytes 4-bit LLM, trained through LoRA adapters (QLoRA: needs lora_r > 0); vision "
                  "tower, projector and lm_head stay unquantised"},
    )
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "nf4 or fp4"})
    bnb_4bit_compute_dtype: str = field(default="bfloat16", metadata={"help": "float32, bfloat16 or float16"})
    bnb_4bit_use_double_quant: bool = field(default=False)
    trust_remote_code: bool = field(default=False, metadata={"help": "only if you trust the model folder's code"})
    projector_path: str | None = field(
        default=None, metadata={"help": "start from this projector.safetensors (stage 1's export) instead of the folder's"}
    )
    # ---- LoRA / QLoRA (peft; tga_fast.training.lora) ----
    lora_r: int = field(
        default=0,
        metadata={"help": "LoRA rank; 0: no adapters. > 0 (with train_llm): the LLM trains through LoRA adapters, "
                  "its own weights frozen; the projector trains in full, the vision tower never"},
    )
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA scaling alpha (the update is alpha / r * BA); default 2 * lora_r"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch's input"})
    lora_target: list[str] | None = field(
        default=None,
        metadata={"help": "module names inside the LLM's decoder blocks to adapt (e.g. q_proj v_proj); default: the "
                  "attention and MLP projections of the text family (tga_fast/models/adapters.py)"},
    )

    def __post_init__(self):
        if self.dtype not in DTYPES:
            _fail("ModelConfig", "dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"):
            _fail("ModelConfig", "attn_implementation", f"is not an attention implementation: {self.attn_implementation!r}")
        if self.lora_r < 0:
            _fail("ModelConfig", "lora_r", f"must be >= 0 (0: no LoRA), got {self.lora_r}")
        if self.lora_r and not self.train_llm:
            _fail("ModelConfig", "lora_r", "adapts the LLM: it needs train_llm=True (lora_r 0 trains the projector only)")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            _fail("ModelConfig", "lora_alpha", f"must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            _fail("ModelConfig", "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if self.lora_target is not None and (not self.lora_target or not self.lora_r):
            _fail("ModelConfig", "lora_target", "needs lora_r > 0 and at least one module name")
        if self.load_in_4bit and not self.lora_r:
            # transformers' Trainer trains a quantised model only through adapters (QLoRA)
            _fail("ModelConfig", "load_in_4bit", "a 4-bit LLM trains through LoRA adapters (QLoRA): set lora_r > 0 "
                  "and train_llm=True")
        if self.projector_path is not None and not Path(self.projector_path).is_file():
            _fail("ModelConfig", "projector_path", f"is not a file: {self.projector_path}")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            _fail("ModelConfig", "bnb_4bit_quant_type", f"must be 'nf4' or 'fp4', got {self.bnb_4bit_quant_type!r}")
        if self.bnb_4bit_compute_dtype not in DTYPES[1:]:
            _fail("ModelConfig", "bnb_4bit_compute_dtype", f"must be one of {DTYPES[1:]}, got {self.bnb_4bit_compute_dtype!r}")

    def require_model(self) -> str:
        """The model folder; ``ValueError`` naming the field when it is not set."""
        if not self.model_name_or_path:
            _fail("ModelConfig", "model_name_or_path", "is required (a local model folder)")
        return self.model_name_or_path


@dataclass
class DataConfig:
    """LLaVA-format JSON/JSONL with ``caption``, ``retrieved`` and ``toxic`` per record."""

    data_path: str | None = field(default=None, metadata={"help": "LLaVA-format .json or .jsonl"})
    image_folder: str | None = field(default=None, metadata={"help": "root of the records' image paths (default: the data file's folder)"})
    max_length: int = field(default=1200, metadata={"help": "longest tokenized sample (METHOD.md 4: 1200)"})
    use_retrieved: bool = field(
        default=True, metadata={"help": "put 'Retrieved Text: ...' before the image (False: no retrieved text, no hinge)"}
    )
    # --- content order (issue 14): a template that replaces the processor's ---
    chat_template: str | None = field(
        default=None,
        metadata={"help": "a Jinja file whose chat template replaces the processor's (and is saved with the trained "
                  "model); needed when the model's own renders the image before the retrieved text (llava-hf's do): "
                  "configs/chat_templates/llava-1.5-content-order.jinja for llava-1.5 checkpoints"},
    )
    text_replay_path: str | None = field(
        default=None,
        metadata={"help": "LLaVA-format .json/.jsonl of text-only records (no 'image') mixed into training: LM loss "
                  "only, e.g. the LLM's own instruction data or text safety samples"},
    )
    text_replay_ratio: float | None = field(
        default=None,
        metadata={"help": "share of text-replay samples among an epoch's samples, in [0, 1) (drawn from the file with "
                  "the seed, repeated if it is short); unset: every record of text_replay_path once"},
    )
    cache_encoded: bool = field(
        default=False,
        metadata={"help": "keep every encoded sample in memory after its first use (later epochs skip image decoding "
                  "and tokenization); for data that fits in memory"},
    )
    # Toxic samples are text-only (METHOD.md 4): the LM loss on a toxic image would be visual safety tuning.
    toxic_images: str = field(
        default="reject",
        metadata={"help": "a record flagged toxic that has an image: 'reject' (skipped and listed with the reason) "
                  "or 'zero' (the released code's behaviour: its LLaVA fork gives it a zero image and no image "
                  "tokens, so it is kept and trained text-only, LM loss only, without its image)"},
    )

    def __post_init__(self):
        if self.toxic_images not in ("reject", "zero"):
            _fail("DataConfig", "toxic_images", f"must be 'reject' or 'zero', got {self.toxic_images!r}")
        if self.max_length < 1:
            _fail("DataConfig", "max_length", f"must be >= 1, got {self.max_length}")
        if self.text_replay_ratio is not None:
            if not isinstance(self.text_replay_ratio, (int, float)) or not 0 <= self.text_replay_ratio < 1:
                _fail("DataConfig", "text_replay_ratio", f"must be a share in [0, 1), got {self.text_replay_ratio!r}")
            if not self.text_replay_path:
                _fail("DataConfig", "text_replay_ratio", "needs text_replay_path (the text-only records to mix in)")

    def require_data(self) -> str:
        """The data file; ``ValueError`` naming the field when it is not set or not a file."""
        if not self.data_path:
            _fail("DataConfig", "data_path", "is required (a LLaVA-format .json or .jsonl file)")
        if not Path(self.data_path).is_file():
            _fail("DataConfig", "data_path", f"is not a file: {self.data_path}")
        if self.image_folder is not None and not Path(self.image_folder).is_dir():
            _fail("DataConfig", "image_folder", f"is not a folder: {self.image_folder}")
        if self.text_replay_path is not None and not Path(self.text_replay_path).is_file():
            _fail("DataConfig", "text_replay_path", f"is not a file: {self.text_replay_path}")
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            _fail("DataConfig", "chat_template", f"is not a file: {self.chat_template}")
        return self.data_path


@dataclass
class TGAConfig:
    """The alignment terms (METHOD.md 4): L = L_CE + L_pair + L_hinge over the target layers."""

    align: bool = field(default=True, metadata={"help": "add the TGA terms; False trains with the LM loss only"})
    target_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "HF layer numbers (hidden_states[k]); default 10..18 for 32-layer models, scaled to other depths; "
            "0 (the decoder's input: projector output and embeddings) is allowed, with a warning"
        },
    )
    lm_loss_weight: float = field(
        default=1.0, metadata={"help": "weight of L_CE (1 in the method; 0 trains the alignment terms alone, a diagnostic)"}
    )
    pair_weight: float = field(default=0.25, metadata={"help": "w_pair"})
    hinge_weight: float = field(default=0.1, metadata={"help": "w_hinge"})
    pair_power: float = field(default=1.0, metadata={"help": "L_pair decays as (1 - t) ** pair_power"})
    hinge_power: float = field(default=2.0, metadata={"help": "L_hinge decays as (1 - t) ** hinge_power"})
    faithful_reference: bool = field(
        default=False, metadata={"help": "reproduce the released code: the terms are constants (no gradient)"}
    )
    teacher_template: str = field(
        default="chat", metadata={"help": "the teacher prompt: 'chat' = the caption alone in the model's chat template"}
    )

    def __post_init__(self):
        for name in ("lm_loss_weight", "pair_weight", "hinge_weight", "pair_power", "hinge_power"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                _fail("TGAConfig", name, f"must be a number >= 0, got {value!r}")
        if self.target_layers is not None:
            layers = list(self.target_layers)
            if not layers:
                _fail("TGAConfig", "target_layers", "is empty")
            if any(not isinstance(k, int) or k < 0 for k in layers):
                _fail("TGAConfig", "target_layers", f"must be layer numbers >= 0 (0 = the decoder's input, 1 = the "
                      f"first decoder block's output), got {layers}")
            if len(set(layers)) != len(layers):
                _fail("TGAConfig", "target_layers", f"has duplicates: {layers}")
        if self.teacher_template != "chat":
            _fail("TGAConfig", "teacher_template", f"must be 'chat', got {self.teacher_template!r}")


def default_target_layers(num_layers: int) -> list[int]:
    """METHOD.md's 10..18 for a 32-layer LLM, scaled by depth for others (a 4-layer LLM gets [1, 2])."""
    if num_layers == PAPER_DEPTH:
        return list(range(PAPER_LAYERS[0], PAPER_LAYERS[1] + 1))
    def scaled(layer: int) -> int:  # rounded half up
        return int(layer * num_layers / PAPER_DEPTH + 0.5)

    start = max(1, scaled(PAPER_LAYERS[0]))
    end = min(num_layers, max(start, scaled(PAPER_LAYERS[1])))
    return list(range(start, end + 1))


def resolve_target_layers(config: TGAConfig, num_layers: int) -> list[int]:
    """The layers to align for an LLM of ``num_layers`` decoder blocks (validated against its depth)."""
    if config.target_layers is None:
        layers = default_target_layers(num_layers)
        if num_layers != PAPER_DEPTH:
            logger.warning(
                "TGAConfig.target_layers not set: the paper's 10..18 are for 32 layers; this LLM has %d, so the "
                "scaled default %s is used (set target_layers to choose)", num_layers, layers,
            )
        return layers
    bad = [k for k in config.target_layers if not 0 <= k <= num_layers]
    if bad:
        _fail("TGAConfig", "target_layers", f"{bad} out of range: this LLM has hidden_states[0..{num_layers}]")
    return list(config.target_layers)


@dataclass
class TrainConfig(TrainingArguments):
    """``TrainingArguments`` with TGA defaults: the collator's extra fields are not model inputs, so
    ``remove_unused_columns`` is False; gradient checkpointing is non-reentrant, because a reentrant checkpoint
    runs the forward under ``no_grad`` and the cosines captured inside a layer would have no gradient; DDP's
    ``find_unused_parameters`` is False with or without checkpointing (the Trainer would turn it on without), so
    that DDP, ZeRO and one process all give the projector the same zero gradient on text-only steps."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "must stay False: the teacher batch and spans are not model arguments"}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP: False (TGA's default) since every trainable part gets a gradient each step (text-only steps "
            "give the projector a zero one); True lets DDP skip the projector on text-only steps (its gradient is "
            "then None, so Adam leaves it alone there)"
        },
    )
    export_projector: bool = field(
        default=True, metadata={"help": "write <output_dir>/projector.safetensors at the end (gathered under ZeRO-3); "
                                "skipped for a text-only LLM, which has no projector"}
    )
    group_by_modality: bool = field(
        default=True,
        metadata={"help": "each step all image or all text-only samples on every process (needed by ZeRO/DDP with mixed data)"},
    )
    save_full_model: bool = field(
        default=True,
        metadata={"help": "save the whole model at the end (with LoRA: the adapter and projector.safetensors; False: "
                  "the projector export only)"},
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "LoRA runs: also write <output_dir>/merged, the base model (unquantised) with the adapter "
                  "merged in and the trained projector, a plain HF folder"},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "start over in an output_dir that holds another run's checkpoints: they are removed first "
                  "(without it such a folder is refused unless --resume_from_checkpoint is given)"},
    )

    def __post_init__(self):
        if self.remove_unused_columns:
            _fail("TrainConfig", "remove_unused_columns", "must be False: the TGA collator's teacher batch and spans "
                  "are not arguments of the model's forward")
        super().__post_init__()  # resolves the deprecated gradient_checkpointing* aliases and JSON dict strings
        if self.activation_checkpointing:
            kwargs = dict(self.activation_checkpointing_kwargs or {})
            if kwargs.get("use_reentrant", False):
                _fail("TrainConfig", "activation_checkpointing_kwargs", "use_reentrant=True is not supported: a "
                      "reentrant checkpoint runs the layers under no_grad, so the captured cosines would have no gradient")
            kwargs["use_reentrant"] = False
            self.activation_checkpointing_kwargs = self.gradient_checkpointing_kwargs = kwargs
        if self.torch_compile:
            logger.warning("TrainConfig.torch_compile=True: the capture hooks run inside the compiled model; untested")


CONFIG_CLASSES = (ModelConfig, DataConfig, TGAConfig, TrainConfig)


def _load_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as error:
                raise ValueError(" ".join(str(error).split())) from None
        else:
            values = json.loads(text)
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"config file {path} cannot be read: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold one mapping of option names to values")
    return values


def _pop_config_file(argv: list[str], parser: HfArgumentParser) -> Path | None:
    """Removes and returns the config file: ``--config FILE``, or the first .json/.yaml/.yml argument that is not
    an option's value (``--deepspeed configs/deepspeed/zero3.json`` and ``--data_path=data.json`` are values,
    wherever they stand)."""
    takes_value = {
        option for action in parser._actions if action.nargs != 0 and action.nargs != "?" for option in action.option_strings
    }
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
            del argv[i : i + 2]
            break
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            del argv[i]
            break
    if path is None:
        for i, arg in enumerate(argv):
            is_value = arg.startswith("-") or (i and argv[i - 1] in takes_value)  # --deepspeed=x.json, --deepspeed x.json
            if Path(arg).suffix in (".json", ".yaml", ".yml") and not is_value:
                path = argv.pop(i)
                break
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserError(f"config file not found: {path}")
    return Path(path)


def parse_config(argv: Sequence[str] | None = None) -> tuple[ModelConfig, DataConfig, TGAConfig, TrainConfig]:
    """``(model, data, tga, train)`` from argv. A config file (``--config FILE``, or an argument ending in
    .json/.yaml/.yml that is no option's value) supplies defaults that the other options override, wherever it
    stands. Unknown keys are errors."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(CONFIG_CLASSES)
    path = _pop_config_file(argv, parser)
    if path is not None:
        values = _load_file(path)
        known = {f.name for cls in CONFIG_CLASSES for f in fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config file {path}: unknown options {unknown}")
        # Defaults, not values: argparse then lets the command line override them and still converts strings.
        parser.set_defaults(**values)
    model, data, tga, train, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if rest:
        raise ValueError(f"unknown options: {rest}")
    return model, data, tga, train
