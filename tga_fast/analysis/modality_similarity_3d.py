"""Cross-modal similarity per layer (METHOD.md 3 D).

For each pair (image, text with the same meaning): at every HF layer k (0 = the decoder's input embeddings with
the image features merged, N = the final norm's output), the cosine between the mean hidden state of the image
tokens (the image prompt) and the mean hidden state of the text tokens (the same prompt with the text in the
image's place and no image at all). Pooled states come from ``capture`` (no hidden-state sequence is kept).
With a CLIP-style dual encoder, the image-text cosine of the same pairs is the reference line.

    result = modality_similarity(model, processor, samples, clip="/models/clip-vit-large-patch14-336")
    result.cosine_mean, result.clip_cosine_mean
    result.save("out/")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tga_fast.analysis.options import AnalysisOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, mean_std

__all__ = ["ModalitySimilarityOptions", "ModalitySimilarityResult", "clip_cosines", "modality_similarity"]


@dataclass
class ModalitySimilarityResult(AnalysisResult):
    """Per-layer image-text cosine of pooled hidden states.

    Attributes:
        layers: ``[0, ..., N]`` (HF numbering).
        cosine_mean, cosine_std: per layer over pairs.
        clip_cosine_mean: mean CLIP image-text cosine of the same pairs (None without a CLIP model).
        clip_model: what produced it (a path or the encoders' repr), or None.
        samples: per pair ``id``, ``scene``, ``image_tokens``, ``text_tokens``, ``cosine`` per layer and
            ``clip_cosine`` (or None).
        skipped: samples left out, with the reason.
        settings: how the run was made.
    """

    kind = "modality_similarity"

    layers: list
    cosine_mean: list
    cosine_std: list
    clip_cosine_mean: float | None
    clip_model: str | None
    samples: list
    skipped: list
    settings: dict

    def figure(self):
        from tga_fast.analysis.plots import plot_modality_similarity

        return plot_modality_similarity(self)


def clip_cosines(clip, images: Sequence, texts: Sequence[str], *, batch_size: int = 32,
                 progress: bool = True) -> tuple[torch.Tensor, str]:
    """``(cos [N], name)``: the image-text cosine of each pair under a CLIP-style dual encoder.

    ``clip`` is a local checkpoint folder (loaded with :class:`tga_fast.retrieval.encoders.ImageEncoder` and
    ``TextEncoder``) or a pair ``(image_encoder, text_encoder)`` of objects with ``.encode(...) -> [N, d]``
    L2-normalised embeddings in one space.
    """
    if isinstance(clip, (str, Path)):
        from tga_fast.retrieval.encoders import ImageEncoder, TextEncoder

        name = str(clip)
        image_encoder = ImageEncoder(clip, batch_size=batch_size, progress=progress)
        text_encoder = TextEncoder(clip, batch_size=batch_size, progress=progress)
    elif isinstance(clip, (tuple, list)) and len(clip) == 2:
        image_encoder, text_encoder = clip
        name = f"{getattr(image_encoder, 'path', type(image_encoder).__name__)}"
    else:
        raise TypeError(f"clip must be a checkpoint folder or an (image_encoder, text_encoder) pair, "
                        f"got {type(clip).__name__}")
    image_embeddings = image_encoder.encode(list(images)).float()
    text_embeddings = text_encoder.encode(list(texts)).float()
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(f"image embeddings {tuple(image_embeddings.shape)} and text embeddings "
                         f"{tuple(text_embeddings.shape)} do not match: the encoders must share one space")
    cos = torch.nn.functional.cosine_similarity(image_embeddings, text_embeddings, dim=-1)
    return cos, name


def modality_similarity(
    model,
    processor,
    samples: Sequence,
    *,
    batch_size: int = 8,
    progress: bool = True,
    clip=None,
    with_retrieved: bool = False,
    system_prompt: str | None = None,
    cluster_by: str = "concept",
) -> ModalitySimilarityResult:
    """Per-layer cosine of the pooled image tokens (image prompt) and pooled text tokens (text prompt, no image)
    for every sample (toxic or benign: the pairs only need the same meaning); two forwards per batch.

    Args:
        clip: optional CLIP reference (see :func:`clip_cosines`).
    """
    from tga_fast.analysis.batching import Batches, encode, prepare, run_settings
    from tga_fast.models import capture

    parts, kept, skipped = prepare(model, samples, batch_size, need_image=True)
    if parts.image_token_id is None:
        raise ValueError(f"{parts.model_type} has no image token: modality_similarity needs a vision-language model")
    layers = list(range(parts.num_layers + 1))
    options = dict(with_retrieved=with_retrieved, system_prompt=system_prompt)
    per_sample, pairs = [], []  # pairs: (sample, image) of the rows, for the CLIP reference
    batches = Batches(kept, batch_size, desc="modality similarity", progress=progress, images=True, unit="pair")
    for batch_samples, images in batches:
        image_encoded = encode(model, processor, [s.to_prompt("image", **options) for s in batch_samples], images)
        text_encoded = encode(model, processor, [s.to_prompt("text", **options) for s in batch_samples])
        with torch.no_grad():
            with capture(model, layers, image_encoded.spans.select("image")) as image_cap:
                model(**image_encoded.batch, use_cache=False, logits_to_keep=1)
            with capture(model, layers, text_encoded.spans.select("text")) as text_cap:
                model(**text_encoded.batch, use_cache=False, logits_to_keep=1)
            cos = torch.nn.functional.cosine_similarity(
                image_cap.pooled[:, :, 0].float(), text_cap.pooled[:, :, 0].float(), dim=-1
            ).cpu()  # [N+1, b]
        image_tokens = image_encoded.spans.select("image").lengths[:, 0].cpu()
        text_tokens = text_encoded.spans.select("text").lengths[:, 0].cpu()
        for i, sample in enumerate(batch_samples):
            per_sample.append({
                "id": str(sample.id),
                "scene": sample.scene,
                "image_tokens": int(image_tokens[i]),
                "text_tokens": int(text_tokens[i]),
                "cosine": cos[:, i].tolist(),
                "clip_cosine": None,
            })
        if clip is not None:  # decoded once, kept only when the reference needs them
            pairs += zip(batch_samples, images)
    clip_mean, clip_name = None, None
    if clip is not None:
        clip_cos, clip_name = clip_cosines(clip, [image for _, image in pairs], [s.text for s, _ in pairs],
                                           progress=progress)
        for row, value in zip(per_sample, clip_cos.tolist()):
            row["clip_cosine"] = value
        clip_mean = float(clip_cos.mean())
    mean, std = mean_std([s["cosine"] for s in per_sample])
    return ModalitySimilarityResult(
        layers=layers,
        cosine_mean=mean,
        cosine_std=std,
        clip_cosine_mean=clip_mean,
        clip_model=clip_name,
        samples=per_sample,
        skipped=skipped + batches.failed,
        settings=run_settings(model, batch_size, with_retrieved=with_retrieved, system_prompt=system_prompt),
    )


@dataclass(frozen=True)
class ModalitySimilarityOptions(AnalysisOptions):
    """The options of :func:`modality_similarity` beyond the common ones."""

    clip: str | None = option(None, "local CLIP-style checkpoint folder for the reference line")

    def needs_images(self) -> bool:
        return True


register("modality_similarity", modality_similarity, ModalitySimilarityResult, ModalitySimilarityOptions,
         "3D: per-layer cosine of the pooled image and text states of the same meaning")
