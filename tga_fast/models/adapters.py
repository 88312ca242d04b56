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
    # How a sample's image tokens lie in ``input_ids`` (see ``tga_fast.models.spans.image_token_spans``): "one" = one
    # contiguous run per sample (LLaVA: a split run is a bug and raises); "hull" = several runs per image (row-break
    # or tile tokens between them), the image span covering the first to one past the last image token, the
    # tokens in between included.
    image_runs: str = "one"
    # The model's own attention mask over a prompt: "causal", or "image_block" (Gemma 3: an image's tokens see each
    # other bidirectionally), "prefix" (a prefix-LM: the prefix sees itself bidirectionally). ``knockout`` keeps a
    # non-causal mask and hides the blocked keys inside it rather than running the causal fused op.
    attention_mask: str = "causal"
    # Per-token forward inputs of the family (``[B, T]``, padded with the input ids) beyond input_ids and
    # attention_mask: what the processor returns and ``generate``/the collator must pass through.
    token_inputs: tuple[str, ...] = ()
    # Per-image forward inputs besides ``pixel_values`` (``image_grid_thw``, ``image_sizes``...).
    image_inputs: tuple[str, ...] = ()
    # What tga_fast runs on this family, for ``tga-fast env`` and the README (one line).
    works: str = "capture, knockout, steer, skip_layers, attention_shares, analyses, TGA training (stage 1/2, LoRA)"

    def __post_init__(self):
        if self.image_runs not in ("one", "hull"):
            raise ValueError(f"image_runs must be 'one' or 'hull', got {self.image_runs!r}")
        if self.attention_mask not in ("causal", "image_block", "prefix"):
            raise ValueError(f"attention_mask must be 'causal', 'image_block' or 'prefix', got {self.attention_mask!r}")


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

_LLAVA_NEXT = replace(_LLAVA_LIKE, image_inputs=("image_sizes",))

# ---- Qwen2-VL, Qwen2.5-VL, Gemma 3, PaliGemma ----
# Qwen2-VL / Qwen2.5-VL: the projector (the patch merger) sits inside the vision tower; 3-D rotary positions come
# from ``mm_token_type_ids`` and ``image_grid_thw``.
_QWEN_VL = Architecture(
    decoder_layers=("model.language_model.layers",),
    final_norm=("model.language_model.norm",),
    input_embeddings=("model.language_model.embed_tokens",),
    vision_tower=("model.visual",),
    projector=("model.visual.merger",),
    image_token_attrs=("image_token_id",),
    lora_targets=_DECODER_ONLY.lora_targets,
    token_inputs=("mm_token_type_ids",),
    image_inputs=("image_grid_thw",),
)
# Gemma 3: a fixed number of soft tokens per image between <start_of_image> and <end_of_image>, seen
# bidirectionally by each other (``token_type_ids`` marks them).
_GEMMA3 = Architecture(
    decoder_layers=("model.language_model.layers",),
    final_norm=("model.language_model.norm",),
    input_embeddings=("model.language_model.embed_tokens",),
    vision_tower=("model.vision_tower",),
    projector=("model.multi_modal_projector",),
    image_token_attrs=("image_token_id", "image_token_index"),
    lora_targets=_DECODER_ONLY.lora_targets,
    attention_mask="image_block",
    token_inputs=("token_type_ids",),
)
# PaliGemma: the image tokens first, then BOS and the prompt; a prefix-LM mask (``token_type_ids`` 0 = prefix,
# seen bidirectionally; 1 = the answer, causal).
_PALIGEMMA = replace(_GEMMA3, attention_mask="prefix")

# ---- LLaVA-OneVision, Mistral 3, Idefics3 ----
# LLaVA-OneVision: SigLIP + Qwen2; anyres tiles, unpadding and one newline feature per row all sit on <image>
# tokens: one run. (image_newline, a parameter beside the projector, is not part of it.)
_LLAVA_ONEVISION = replace(_LLAVA_LIKE, text_backbones=("qwen2",), image_inputs=("image_sizes", "batch_num_images"))
# Mistral 3: Pixtral tower; the projector holds the patch merger. An image is rows of [IMG] separated by
# [IMG_BREAK] and closed by [IMG_END]: several runs, pooled as their hull (the breaks included).
_MISTRAL3 = replace(
    _LLAVA_LIKE, text_backbones=("mistral",), image_runs="hull", image_inputs=("image_sizes",),
    works=_LLAVA_LIKE.works + "; load_model needs torchvision (transformers 5.24's PixtralProcessor imports it)",
)
# Idefics3 (SmolVLM): SigLIP-like tower + pixel-shuffle connector + Llama. Each tile is <fake_token_around_image>
# <row_i_col_j> + its <image> run, then the global image: several runs, pooled as their hull.
_IDEFICS3 = Architecture(
    decoder_layers=("model.text_model.layers",),
    final_norm=("model.text_model.norm",),
    input_embeddings=("model.text_model.embed_tokens",),
    vision_tower=("model.vision_model",),
    projector=("model.connector",),
    image_token_attrs=("image_token_id",),
    text_backbones=("llama",),
    image_runs="hull",
    image_inputs=("pixel_attention_mask",),
)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _DECODER_ONLY,
    "mistral": _DECODER_ONLY,
    "qwen2": _DECODER_ONLY,
    "llava": _LLAVA_LIKE,
    "llava_next": _LLAVA_NEXT,
    # multimodal rotary positions, bidirectional image block, prefix LM
    "qwen2_vl": _QWEN_VL,
    "qwen2_5_vl": _QWEN_VL,
    "gemma3": _GEMMA3,
    "paligemma": _PALIGEMMA,
    # anyres tiles, row breaks, pixel-shuffled tiles
    "llava_onevision": _LLAVA_ONEVISION,
    "mistral3": _MISTRAL3,
    "idefics3": _IDEFICS3,
}


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
    architecture: Architecture | None = None

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
        architecture=arch,
    )


def text_config_of(model: nn.Module):
    """The config the language model's layers read (``config.text_config`` of a VLM, ``config`` of an LLM): where
    the attention implementation of the decoder blocks is chosen."""
    return getattr(model.config, "text_config", None) or model.config
