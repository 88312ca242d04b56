"""The paper's starting point as a Hugging Face LLaVA folder: a base LLM + a CLIP/SigLIP tower + a fresh projector.

    model, processor = build_lvlm("/models/vicuna-7b-v1.5", "/models/clip-vit-large-patch14-336", "out/lvlm")
    tga-fast build-lvlm --llm /models/vicuna-7b-v1.5 --vision /models/clip-vit-large-patch14-336 --out out/lvlm

What is assembled (METHOD.md 1 and 4)::

    image [3, H, W] -> vision tower (hidden_states[vision_layer], CLS dropped with image_tokens="default")
                    -> projector (new: mlp2x_gelu = Linear-GELU-Linear, or linear) -> N image tokens
    "Retrieved Text: ... " <image> x N "\\n" question  -> the LLM (its weights and chat format as they were)

The LLM's and the tower's weights are kept as they are; new are the projector (seeded; ``image_newline`` too for
LLaVA-NeXT) and the rows of the tokens added to the tokenizer (the image token, and a pad token where the LLM has
none), initialised as the mean of the existing rows. The chat template is the LLM's own, extended so that a
content list ``[text, image, text]`` renders in that order with ``<image>\\n`` where the image stands (the prompt
of METHOD.md 4; llava-hf's templates print every image first). The folder loads with
:func:`tga_fast.models.loading.load_model` and with plain ``transformers`` (``AutoModelForImageTextToText`` +
``AutoProcessor``), and records how it was built in ``build_lvlm.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from tga_fast.errors import UserError

__all__ = [
    "IMAGE_TOKENS",
    "LLAVA_1_5_TEMPLATE",
    "PROJECTORS",
    "VISION_FAMILIES",
    "build_lvlm",
    "content_order_template",
]

logger = logging.getLogger(__name__)

PROJECTORS = ("mlp2x_gelu", "linear")
IMAGE_TOKENS = ("default", "full")
# Vision checkpoints accepted (config.model_type of the folder) -> (the tower's model_type, its class name, whether
# the tower prepends a class token). Adding a tower family is adding a row.
VISION_FAMILIES = {
    "clip": ("clip_vision_model", "CLIPVisionModel", True),
    "clip_vision_model": ("clip_vision_model", "CLIPVisionModel", True),
    "siglip": ("siglip_vision_model", "SiglipVisionModel", False),
    "siglip_vision_model": ("siglip_vision_model", "SiglipVisionModel", False),
}
BUILD_RECORD = "build_lvlm.json"

# LLaVA-1.5's conversation format ("USER: ... ASSISTANT: ...</s>", as llava-hf renders it) with content order kept:
# the template for an LLM that ships none (Vicuna), and for llava-1.5 checkpoints via --chat_template
# (configs/chat_templates/llava-1.5-content-order.jinja holds the same text).
LLAVA_1_5_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') }} "
    "{% else %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %} {% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def content_order_template(template: str, image_token: str = "<image>") -> str:
    """``template`` (a chat template written for string contents, as LLMs ship them) extended for content lists.

    A Jinja preamble rewrites each message whose content is a list into a string, item by item in the order given:
    a text item as its text, an image item as ``image_token + "\\n"``; string contents pass unchanged. So
    ``[{"type": "text", "text": "Retrieved Text: r. "}, {"type": "image"}, {"type": "text", "text": "q"}]`` renders
    as ``"Retrieved Text: r. <image>\\nq"`` inside the LLM's own turn format.
    """
    image = json.dumps(image_token + "\n")  # a JSON string is a valid Jinja string literal
    preamble = (
        "{%- set _tga = namespace(messages=[]) -%}"
        "{%- for _m in messages -%}"
        "{%- if _m['content'] is string or _m['content'] is none -%}"
        "{%- set _tga.messages = _tga.messages + [_m] -%}"
        "{%- else -%}"
        "{%- set _text = namespace(value='') -%}"
        "{%- for _c in _m['content'] -%}"
        "{%- if _c['type'] == 'image' -%}{%- set _text.value = _text.value + " + image + " -%}"
        "{%- elif _c['type'] == 'text' -%}{%- set _text.value = _text.value + _c['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set _tga.messages = _tga.messages + [dict(_m, content=_text.value)] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = _tga.messages -%}"
    )
    return preamble + template


def _folder(path, flag: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {folder} does not exist (a local Hugging Face folder is expected)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {folder} has no config.json (a local Hugging Face folder is expected)")
    return folder


def _read_template(chat_template: str | os.PathLike | None) -> str | None:
    """A chat template given as Jinja text or as a file holding it."""
    if chat_template is None:
        return None
    text = os.fspath(chat_template)
    if "{%" in text or "{{" in text:
        return text
    if not Path(text).is_file():
        raise FileNotFoundError(f"chat template {text} is neither a file nor a Jinja template")
    return Path(text).read_text(encoding="utf-8")


def _add_tokens(llm, tokenizer, image_token: str) -> list[int]:
    """Adds ``image_token`` (and ``<pad>`` when the tokenizer has no pad token) as special tokens, resizes the
    LLM's embeddings when the new ids fall past them, and sets the new rows (input embeddings, and the lm_head
    when untied) to the mean of the existing tokens' rows: a new token then starts as an average token instead of
    a random vector with an arbitrary logit. Returns the new ids."""
    from tokenizers import AddedToken

    existing = len(tokenizer)
    wanted = []
    if image_token not in tokenizer.get_vocab():
        wanted.append(AddedToken(image_token, special=True, normalized=False))
    if tokenizer.pad_token is None:
        # LLaVA adds a pad token too (llava-1.5-hf's <pad>); padding with EOS would hide the end-of-turn labels.
        wanted.append(AddedToken("<pad>", special=True, normalized=False))
        tokenizer.add_special_tokens({"pad_token": wanted[-1]})
        wanted = wanted[:-1]
    if wanted:
        tokenizer.add_tokens(wanted, special_tokens=True)
    new_ids = list(range(existing, len(tokenizer)))
    if not new_ids:
        return []
    rows = llm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        embeddings = [llm.get_input_embeddings().weight]
        head = llm.get_output_embeddings()
        if head is not None and head.weight is not embeddings[0]:
            embeddings.append(head.weight)
        for weight in embeddings:
            weight[new_ids] = weight[:existing].float().mean(dim=0).to(weight.dtype)
    return new_ids


def _check_template_order(tokenizer, image_token: str) -> None:
    """Renders a user turn ``[text, image, text]`` and raises when the three do not come out in that order (a
    template that drops or reorders content items)."""
    probe = [{"role": "user", "content": [{"type": "text", "text": "first-probe "}, {"type": "image"},
                                          {"type": "text", "text": "last-probe"}]}]  # fmt: skip
    text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    positions = [text.find(piece) for piece in ("first-probe", image_token, "last-probe")]
    if min(positions) < 0 or positions != sorted(positions):
        raise UserError(f"the chat template does not keep content order (a [text, image, text] turn renders as "
                        f"{text!r}): pass --chat-template FILE with one that does")


def _image_processor(vision: Path, vision_config, has_cls: bool):
    """The tower's own image processor when the folder has one (``preprocessor_config.json``), else the family's
    default at the tower's resolution."""
    import transformers as tf

    if (vision / "preprocessor_config.json").is_file():
        return tf.AutoImageProcessor.from_pretrained(vision, local_files_only=True)
    size = vision_config.image_size
    logger.warning("%s has no preprocessor_config.json: using the %s image processor's defaults at %d px", vision,
                   "CLIP" if has_cls else "SigLIP", size)
    if has_cls:
        return tf.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return tf.SiglipImageProcessor(size={"height": size, "width": size})


def _anyres_pinpoints(size: int) -> list[list[int]]:
    """LLaVA-NeXT's grid of tile layouts (1x2, 2x1, 2x2, 1x3, 3x1 tiles of the tower's resolution)."""
    return [[size, 2 * size], [2 * size, size], [2 * size, 2 * size], [3 * size, size], [size, 3 * size]]


def build_lvlm(
    llm,
    vision,
    out=None,
    *,
    projector: str = "mlp2x_gelu",
    vision_layer: int = -2,
    image_tokens: str = "default",
    anyres: bool = False,
    seed: int = 0,
    image_token: str = "<image>",
    chat_template: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "auto",
    overwrite: bool = False,
):
    """Assembles a LLaVA (``LlavaForConditionalGeneration``; ``LlavaNextForConditionalGeneration`` with ``anyres``)
    from a causal-LM folder and a vision folder, saves it to ``out`` (unless None) and returns
    ``(model, processor)``, the model in eval mode on the CPU.

    Args:
        llm: a local ``*ForCausalLM`` folder (Llama, Mistral or Qwen2 architecture) with its tokenizer.
        vision: a local CLIP or SigLIP folder: the vision tower alone (``CLIPVisionModel`` / ``SiglipVisionModel``)
            or the dual encoder (``CLIPModel`` / ``SiglipModel``; its vision half is taken).
        out: the folder to write (``save_pretrained`` layout); must not hold files unless ``overwrite``.
        projector: ``"mlp2x_gelu"`` (LLaVA-1.5's Linear-GELU-Linear) or ``"linear"`` (a linear map, LLaVA-1's
            projector: transformers' LLaVA projector with an identity activation and its second layer starting at
            the identity, so the model loads with plain transformers).
        vision_layer: the tower's ``hidden_states`` index the image features come from (-2: the penultimate
            layer, LLaVA-1.5's choice).
        image_tokens: ``"default"``: one token per patch (CLIP's class token dropped, LLaVA-1.5's
            ``vision_feature_select_strategy="default"``; 576 for CLIP ViT-L/14-336); ``"full"``: the class token
            kept too (577). SigLIP has no class token: both give one token per patch.
        anyres: LLaVA-NeXT: high-resolution images as tiles of the tower's resolution plus a downscaled view
            (needs one token per patch, so not ``"full"`` with CLIP).
        seed: the projector's (and LLaVA-NeXT's ``image_newline``'s) initialisation; the global RNG is left alone.
        image_token: the placeholder added to the tokenizer.
        chat_template: a template (file or text) to extend instead of the LLM's own; needed when the LLM ships
            none (then LLaVA-1.5's "USER: ... ASSISTANT:" format is used, with a warning).
        dtype: ``"auto"`` (the LLM checkpoint's dtype for the whole model), or a dtype / its name.
        overwrite: replace files already in ``out``.

    Raises:
        FileNotFoundError: a folder does not exist or has no ``config.json``.
        FileExistsError: ``out`` holds files and ``overwrite`` is False.
        UserError: an unsupported LLM or vision family, or a bad option (the message names it).
    """

    # Loading and building draw from the global RNG here and there (weights initialised before they are
    # replaced): fork it so that a caller's random state is the same after the build as before.
    with torch.random.fork_rng(devices=[]):
        return _build(
            llm, vision, out, projector=projector, vision_layer=vision_layer, image_tokens=image_tokens,
            anyres=anyres, seed=seed, image_token=image_token, chat_template=chat_template, dtype=dtype,
            overwrite=overwrite,
        )  # fmt: skip


def _build(llm, vision, out, *, projector, vision_layer, image_tokens, anyres, seed, image_token, chat_template,
           dtype, overwrite):
    import transformers as tf

    from tga_fast.models.adapters import ARCHITECTURES
    from tga_fast.models.loading import parse_dtype

    if projector not in PROJECTORS:
        raise UserError(f"projector must be one of {PROJECTORS}, got {projector!r}")
    if image_tokens not in IMAGE_TOKENS:
        raise UserError(f"image_tokens must be one of {IMAGE_TOKENS}, got {image_tokens!r}")
    llm_dir, vision_dir = _folder(llm, "--llm"), _folder(vision, "--vision")
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise FileExistsError(f"--out {out} already holds files: choose another folder or pass --overwrite")

    llm_config = tf.AutoConfig.from_pretrained(llm_dir, local_files_only=True)
    backbones = ARCHITECTURES["llava"].text_backbones
    if llm_config.model_type not in backbones:
        raise UserError(f"--llm {llm_dir} is a {llm_config.model_type!r} model; supported LLMs: {list(backbones)}")
    vision_checkpoint = tf.AutoConfig.from_pretrained(vision_dir, local_files_only=True)
    if vision_checkpoint.model_type not in VISION_FAMILIES:
        raise UserError(f"--vision {vision_dir} is a {vision_checkpoint.model_type!r} model; supported: CLIP and "
                        f"SigLIP ({sorted(VISION_FAMILIES)})")
    tower_type, tower_class, has_cls = VISION_FAMILIES[vision_checkpoint.model_type]
    vision_config = getattr(vision_checkpoint, "vision_config", None) or vision_checkpoint
    depth = vision_config.num_hidden_layers
    if not -(depth + 1) <= vision_layer <= depth:
        raise UserError(f"vision_layer {vision_layer} is out of range: the tower has hidden_states[0..{depth}] "
                        f"(or -1..-{depth + 1} from the end)")
    if anyres and image_tokens == "full" and has_cls:
        raise UserError("anyres packs one token per patch into tiles: use image_tokens='default' with CLIP")

    # One dtype for the whole model: the LLM checkpoint's unless asked otherwise.
    load_dtype = "auto" if dtype == "auto" else parse_dtype(dtype, "cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*requires torchvision.*")
        language = tf.AutoModelForCausalLM.from_pretrained(llm_dir, dtype=load_dtype, local_files_only=True)
        tokenizer = tf.AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
        model_dtype = language.dtype
        # A dual-encoder folder (CLIPModel, SiglipModel) holds the tower under the same names as the tower alone
        # ("vision_model.*"); its text half is dropped here, so transformers' report of unused weights is quietened.
        verbosity = tf.logging.get_verbosity()
        if vision_config is not vision_checkpoint:
            tf.logging.set_verbosity_error()
        try:
            tower, info = getattr(tf, tower_class).from_pretrained(
                vision_dir, config=vision_config, dtype=model_dtype, local_files_only=True, output_loading_info=True
            )
        finally:
            tf.logging.set_verbosity(verbosity)
        if info["missing_keys"]:
            raise UserError(f"--vision {vision_dir}: the {tower_class} weights are incomplete (missing "
                            f"{sorted(info['missing_keys'])[:3]} ...)")
        image_processor = _image_processor(vision_dir, tower.config, has_cls)

    template = _read_template(chat_template) or tokenizer.chat_template
    if isinstance(template, dict):  # a tokenizer with named templates: the default one is the chat format
        template = template.get("default")
    if not template:
        logger.warning("%s ships no chat template: using LLaVA-1.5's 'USER: ... ASSISTANT:' format (pass "
                       "--chat-template FILE for another)", llm_dir)
        template = LLAVA_1_5_TEMPLATE.replace("<image>", image_token)
    else:
        template = content_order_template(template, image_token)
    new_ids = _add_tokens(language, tokenizer, image_token)
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    tokenizer.chat_template = template
    _check_template_order(tokenizer, image_token)

    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    strategy = "default" if image_tokens == "default" and has_cls else "full"
    seq_length = patches + (1 if strategy == "full" and has_cls else 0)
    common = dict(
        vision_config=tower.config, text_config=language.config, image_token_index=image_token_id,
        image_seq_length=seq_length, vision_feature_layer=vision_layer,
        vision_feature_select_strategy=strategy, projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear",
        multimodal_projector_bias=True, tie_word_embeddings=bool(language.config.tie_word_embeddings),
    )  # fmt: skip
    processor_options = dict(
        tokenizer=tokenizer, patch_size=vision_config.patch_size, vision_feature_select_strategy=strategy,
        chat_template=template, image_token=image_token, num_additional_image_tokens=int(has_cls),
    )  # fmt: skip
    size = vision_config.image_size
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*requires torchvision.*")
        if anyres:
            pinpoints = _anyres_pinpoints(size)
            config = tf.LlavaNextConfig(**common, image_grid_pinpoints=pinpoints)
            model_class = tf.LlavaNextForConditionalGeneration
            image_processor = tf.LlavaNextImageProcessor(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                image_grid_pinpoints=pinpoints, image_mean=image_processor.image_mean,
                image_std=image_processor.image_std,
            )  # fmt: skip
            processor = tf.LlavaNextProcessor(image_processor=image_processor, **processor_options)
        else:
            config = tf.LlavaConfig(**common)
            model_class = tf.LlavaForConditionalGeneration
            processor = tf.LlavaProcessor(image_processor=image_processor, **processor_options)

    # The skeleton on the meta device (no memory, no initialisation), then the loaded parts put in place: a 7B LLM
    # is never allocated twice.
    with torch.device("meta"):
        model = model_class(config)
    model.model.language_model = language.model
    model.lm_head = language.lm_head
    model.model.vision_tower = tower
    torch.manual_seed(seed)  # the caller's RNG is forked in build_lvlm
    # nn.Linear's own initialisation (Kaiming-uniform), as LLaVA's builder creates its projector.
    fresh = type(model.model.multi_modal_projector)(config)
    if projector == "linear":
        with torch.no_grad():
            nn.init.eye_(fresh.linear_2.weight)
            nn.init.zeros_(fresh.linear_2.bias)
    model.model.multi_modal_projector = fresh.to(model_dtype)
    if anyres:  # LLaVA-NeXT's row separator, initialised as its __init__ does (std 1/sqrt(hidden))
        hidden = language.config.hidden_size
        model.model.image_newline = nn.Parameter((torch.randn(hidden) / math.sqrt(hidden)).to(model_dtype))
    if language.generation_config is not None:
        model.generation_config = language.generation_config
    model.config.dtype = model_dtype
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"build_lvlm: parts left uninitialised {left[:3]} (transformers "
                           f"{tf.__version__} lays LLaVA out differently; see tga_fast/models/build.py)")
    model.eval()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        record = dict(
            llm=str(llm_dir), vision=str(vision_dir), projector=projector, vision_layer=vision_layer,
            image_tokens=image_tokens, anyres=anyres, seed=seed, image_token=image_token,
            image_token_id=image_token_id, image_seq_length=seq_length, added_token_ids=new_ids,
            dtype=str(model_dtype).removeprefix("torch."), transformers=tf.__version__,
        )  # fmt: skip
        (out / BUILD_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        logger.info("wrote %s: %s + %s, %s projector, %d image tokens", out, llm_dir.name, vision_dir.name,
                    projector, seq_length)
    return model, processor
