"""What tga_fast asks of a processor, a bare tokenizer or a model: one place for each question.

A *processor* (``LlavaProcessor``...) carries a tokenizer and an image processor; a bare tokenizer (a text LLM's)
carries neither. Every function here takes either, so callers never test ``hasattr`` themselves.
"""

from __future__ import annotations

__all__ = ["context_length", "image_runs_of", "image_token_id_of", "is_processor", "tokenizer_of"]

# Tokenizers without a known limit report a huge sentinel (transformers' VERY_LARGE_INTEGER, 1e30, or 1e18 in
# some hub configs); no model reads contexts anywhere near this long.
_SANE_CONTEXT = 10_000_000
_IMAGE_TOKEN_ATTRS = ("image_token_id", "image_token_index")


def is_processor(processor) -> bool:
    """True for a multimodal processor (a tokenizer and an image processor), False for a bare tokenizer."""
    return hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")


def tokenizer_of(processor):
    """The tokenizer of a processor, or the bare tokenizer itself."""
    return getattr(processor, "tokenizer", processor)


def image_token_id_of(source) -> int | None:
    """The image placeholder token id of a model, a model config, or a processor; None for a text LLM, its config
    or a bare tokenizer.

    A model: from its adapter (:func:`tga_fast.models.resolve`), else from its config. A config: its
    ``image_token_id`` (``image_token_index`` in older LLaVA configs). A processor: its tokenizer's ``image_token``
    (the token written into input_ids), else its ``image_token_id``, else its ``image_token`` looked up.
    """
    if is_processor(source):
        # The token the processor writes into input_ids: the tokenizer's image token when it names one. Gemma 3's
        # processor calls its text placeholder (<start_of_image>) its image_token; the tokens it expands to are
        # the tokenizer's <image_soft_token>.
        tokenizer_token = getattr(source.tokenizer, "image_token", None)
        if tokenizer_token:
            token_id = source.tokenizer.convert_tokens_to_ids(tokenizer_token)
            if token_id is not None and token_id != getattr(source.tokenizer, "unk_token_id", None):
                return int(token_id)
        token_id = getattr(source, "image_token_id", None)
        if token_id is None and getattr(source, "image_token", None):
            token_id = source.tokenizer.convert_tokens_to_ids(source.image_token)
        return None if token_id is None else int(token_id)
    config = getattr(source, "config", None)
    if config is not None:  # a model
        from tga_fast.models.adapters import resolve

        try:
            return resolve(source).image_token_id
        except ValueError:  # a family without an adapter: its config may still say
            return _config_image_token_id(config)
    from transformers import PretrainedConfig

    if isinstance(source, PretrainedConfig):
        return _config_image_token_id(source)
    return None  # a bare tokenizer: its text LLM has no image token


def image_runs_of(source) -> str:
    """How one image's tokens lie in ``input_ids`` for the family of a model, a model config or a processor: the
    adapter's ``image_runs`` ("one" or "hull", see :func:`tga_fast.models.spans.image_token_spans`).

    A model or config: its ``model_type``'s entry. A processor carries no model type, so its family is looked up
    in transformers' auto mappings (``model_type -> processor class``, then ``model_type -> image processor
    classes``) among the supported families, by class name along the MRO (a subclass or a stand-in over the
    family's image processor counts). "one" where the family is unknown or the matches disagree: "one" is the
    strict rule (a split run raises, naming the sample), so a wrong guess is an error, never a silently wrong span.
    """
    from tga_fast.models.adapters import ARCHITECTURES

    if is_processor(source):
        candidates = [ARCHITECTURES[t].image_runs for t in _processor_model_types(source) if t in ARCHITECTURES]
        return candidates[0] if candidates and len(set(candidates)) == 1 else "one"
    config = getattr(source, "config", source)
    arch = ARCHITECTURES.get(getattr(config, "model_type", None))
    return arch.image_runs if arch is not None else "one"


def _processor_model_types(processor) -> list[str]:
    """The model types whose transformers processor class is (a base of) ``processor``'s class; where none is,
    those whose image processor classes are (a base of) its image processor's class."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    def class_names(obj) -> set[str]:
        return {cls.__name__ for cls in type(obj).__mro__}

    names = class_names(processor)
    found = [t for t, name in PROCESSOR_MAPPING_NAMES.items() if name in names]
    if found:
        return found
    names = class_names(processor.image_processor)

    def image_classes(entry) -> set[str]:  # a {backend: class name} dict in 5.x, a tuple of names before
        values = entry.values() if isinstance(entry, dict) else entry if isinstance(entry, (tuple, list)) else (entry,)
        return {v for v in values if v}

    return [t for t, entry in IMAGE_PROCESSOR_MAPPING_NAMES.items() if image_classes(entry) & names]


def _config_image_token_id(config) -> int | None:
    for attr in _IMAGE_TOKEN_ATTRS:
        if getattr(config, attr, None) is not None:
            return int(getattr(config, attr))
    return None


def context_length(model=None, processor=None) -> int | None:
    """The longest sequence the model was built for: its (text) config's ``max_position_embeddings``, else the
    tokenizer's ``model_max_length`` when that is a real limit (not the "no limit" sentinel); None when neither
    says."""
    if model is not None:
        config = getattr(model, "config", model)
        config = getattr(config, "text_config", None) or config
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    if processor is not None:
        limit = getattr(tokenizer_of(processor), "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < _SANE_CONTEXT:
            return limit
    return None
