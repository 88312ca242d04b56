"""Architectures as data: where each canonical part of a supported HF model lives.

Dispatch is on ``config.model_type`` (never on a checkpoint's name). Each part lists candidate module paths,
tried in order, so one entry covers the layouts of the transformers versions in pyproject.toml's tested range
(5.x puts LLaVA's LLM at ``model.language_model``; 4.4x-4.51 at ``language_model.model``). Adding a family is
adding one entry to ``ARCHITECTURES``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

__all__ = ["ARCHITECTURES", "Architecture", "ModelParts", "resolve", "supported_model_types", "text_config_of"]


@dataclass(frozen=True)
class Architecture:
    """Candidate module paths of each canonical part (relative to the top-level HF model)."""

    decoder_layers: tuple[str, ...]
    final_norm: tuple[str, ...]
    lm_head: tuple[str, ...] = ("lm_head", "language_model.lm_head")
    input_embeddings: tuple[str, ...] = ()
    vision_tower: tuple[str, ...] = ()
    projector: tuple[str, ...] = ()
    # Config attributes holding the image placeholder token id, tried in order.
    image_token_attrs: tuple[str, ...] = ()
    # Text backbones a multimodal family accepts (its config.text_config.model_type).
    text_backbones: tuple[str, ...] = ()
    # LoRA's default targets: the names of the attention and MLP projections inside a decoder block (a text
    # family's; a multimodal family takes its text backbone's). Matched only under ``decoder_layers``.
    lora_targets: tuple[str, ...] = ()
    # How one image's tokens lie in the sequence (``tga_fast.models.spans.image_token_spans``): "one" contiguous
    # run, or "hull" for several runs (row breaks, tiles) pooled from the first to one past the last image token.
    image_runs: str = "one"


_DECODER_ONLY = Architecture(
    decoder_layers=("model.layers",),
    final_norm=("model.norm",),
    input_embeddings=("model.embed_tokens",),
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)
_LLAVA_LIKE = Architecture(
    decoder_layers=("model.language_model.layers", "language_model.model.layers"),
    final_norm=("model.language_model.norm", "language_model.model.norm"),
    input_embeddings=("model.language_model.embed_tokens", "language_model.model.embed_tokens"),
    vision_tower=("model.vision_tower", "vision_tower"),
    projector=("model.multi_modal_projector", "multi_modal_projector"),
    image_token_attrs=("image_token_id", "image_token_index"),
    text_backbones=("llama", "mistral", "qwen2"),
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _DECODER_ONLY,
    "mistral": _DECODER_ONLY,
    "qwen2": _DECODER_ONLY,
    "llava": _LLAVA_LIKE,
    "llava_next": _LLAVA_LIKE,
}

# ---- issue 15, part B: LLaVA-OneVision, Mistral 3, Idefics3 ------------------------------------------------------
ARCHITECTURES.update({
    # SigLIP + Qwen2; anyres tiles, unpadding and one newline feature per row all sit on <image> tokens: one run.
    # (image_newline, a parameter of the model beside the projector, is not part of the projector.)
    "llava_onevision": replace(_LLAVA_LIKE, text_backbones=("qwen2",)),
    # Pixtral tower; the projector holds the patch merger. [IMG] rows separated by [IMG_BREAK], closed by
    # [IMG_END]: several runs per image, pooled as their hull (the breaks between rows included).
    "mistral3": replace(_LLAVA_LIKE, text_backbones=("mistral",), image_runs="hull"),
    # SigLIP-like tower + pixel-shuffle connector + Llama (SmolVLM). Each tile is <fake_token_around_image>
    # <row_i_col_j> + its <image> run, then the global image: several runs per image, pooled as their hull.
    "idefics3": Architecture(
        decoder_layers=("model.text_model.layers",),
        final_norm=("model.text_model.norm",),
        input_embeddings=("model.text_model.embed_tokens",),
        vision_tower=("model.vision_model",),
        projector=("model.connector",),
        image_token_attrs=("image_token_id",),
        text_backbones=("llama",),
        image_runs="hull",
    ),
})


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


@dataclass
class ModelParts:
    """The resolved modules of one model. Layer k in HF numbering (``hidden_states[k]``) is the input of
    ``decoder_layers[0]`` for k = 0, the output of ``decoder_layers[k - 1]`` for 1 <= k < num_layers, and the
    final norm's output for k = num_layers."""

    model_type: str
    decoder_layers: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Module
    input_embeddings: nn.Module | None
    vision_tower: nn.Module | None
    projector: nn.Module | None
    image_token_id: int | None
    image_runs: str = "one"

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers)

    def check_layers(self, layers, name: str = "layers") -> tuple[int, ...]:
        """Validates HF layer numbers (0..num_layers) and returns them as a tuple, in the order given."""
        layers = tuple(int(k) for k in layers)
        if not layers:
            raise ValueError(f"{name} is empty")
        bad = [k for k in layers if not 0 <= k <= self.num_layers]
        if bad:
            raise ValueError(f"{name} {bad} out of range: this model has hidden_states[0..{self.num_layers}]")
        return layers

    def check_blocks(self, blocks, name: str = "blocks") -> tuple[int, ...]:
        """Validates decoder block numbers (1..num_layers: block k produces ``hidden_states[k]``, it is
        ``decoder_layers[k - 1]``) and returns them as a tuple, in the order given."""
        blocks = tuple(int(k) for k in blocks)
        bad = [k for k in blocks if not 1 <= k <= self.num_layers]
        if bad or not blocks:
            raise ValueError(f"{name} {list(blocks)} must be decoder blocks 1..{self.num_layers}")
        return blocks


def _find(model: nn.Module, candidates: tuple[str, ...], part: str, model_type: str, required: bool):
    for path in candidates:
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    if required:
        import transformers

        raise ValueError(
            f"{model_type}: none of the module paths {list(candidates)} for the {part} exists in this model "
            f"(transformers {transformers.__version__}); see tga_fast/models/adapters.py"
        )
    return None


def resolve(model: nn.Module) -> ModelParts:
    """The canonical parts of a supported HF model; raises with the supported list for any other family.

    A peft ``PeftModel`` (LoRA) resolves to the parts of the model it wraps: the same module objects, found
    under the model's own paths rather than through peft's attribute forwarding."""
    get_base_model = getattr(type(model), "get_base_model", None)
    if get_base_model is not None:
        model = get_base_model(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported model family {model_type!r} ({type(model).__name__}); supported: {supported_model_types()}"
        )
    arch = ARCHITECTURES[model_type]
    if arch.text_backbones:
        backbone = getattr(getattr(config, "text_config", None), "model_type", None)
        if backbone not in arch.text_backbones:
            raise ValueError(
                f"{model_type} with text backbone {backbone!r} is not supported; supported backbones: "
                f"{list(arch.text_backbones)}"
            )
    image_token_id = None
    for attr in arch.image_token_attrs:
        if getattr(config, attr, None) is not None:
            image_token_id = int(getattr(config, attr))
            break
    layers = _find(model, arch.decoder_layers, "decoder layers", model_type, required=True)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{model_type}: decoder layers resolved to {type(layers).__name__}, not a ModuleList")
    return ModelParts(
        model_type=model_type,
        decoder_layers=layers,
        final_norm=_find(model, arch.final_norm, "final norm", model_type, required=True),
        lm_head=_find(model, arch.lm_head, "lm_head", model_type, required=True),
        input_embeddings=_find(model, arch.input_embeddings, "input embeddings", model_type, required=False),
        vision_tower=_find(model, arch.vision_tower, "vision tower", model_type, required=bool(arch.vision_tower)),
        projector=_find(model, arch.projector, "projector", model_type, required=bool(arch.projector)),
        image_token_id=image_token_id,
        image_runs=arch.image_runs,
    )


def text_config_of(model: nn.Module):
    """The config the language model's layers read (``config.text_config`` of a VLM, ``config`` of an LLM): where
    the attention implementation of the decoder blocks is chosen."""
    return getattr(model.config, "text_config", None) or model.config
