"""Cross-modal similarity per layer (METHOD.md 3 D), beside mismatched pairs.

For each pair (image, text with the same meaning): at every HF layer k (0 = the decoder's input embeddings with
the image features merged, N = the final norm's output), the cosine between the mean hidden state of the image
tokens (the image prompt) and the mean hidden state of the text tokens (the same prompt with the text in the
image's place and no image at all). Pooled states come from ``capture`` (no hidden-state sequence is kept).
With a CLIP-style dual encoder, the image-text cosine of the same pairs is the reference line.

The control (METHOD.md 3, "Controls"): mismatched pairs, the image of one sample against the text of another
(of another concept wherever the batch has one; :func:`tga_fast.analysis.controls.batch_mismatch_partners`), paired
inside each batch so that only one batch's pooled states are ever held. The result reports matched minus
mismatched per layer with a paired cluster-bootstrap interval, Holm over the layers, the CLIP cosine of the same
mismatched pairs, and a one-sentence verdict.

    result = modality_similarity(model, processor, samples, clip="/models/clip-vit-large-patch14-336")
    result.cosine_mean, result.mismatched_cosine_mean, result.clip_cosine_mean
    result.verdict      # "image and text states of the same meaning are closer than mismatched pairs at ..."
    result.save("out/")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from tga_fast.analysis.controls import (
    ALPHA,
    batch_mismatch_partners,
    columns_above,
    describe_runs,
    paired_contrast,
    power_note,
)
from tga_fast.analysis.options import AnalysisOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, mean_std

__all__ = ["ModalitySimilarityOptions", "ModalitySimilarityResult", "clip_cosines", "modality_similarity"]


@dataclass
class ModalitySimilarityResult(AnalysisResult):
    """Per-layer image-text cosine of pooled hidden states, for matched and mismatched pairs.

    Attributes:
        layers: ``[0, ..., N]`` (HF numbering).
        cosine_mean, cosine_std: per layer over pairs.
        clip_cosine_mean: mean CLIP image-text cosine of the same pairs (None without a CLIP model).
        clip_model: what produced it (a path or the encoders' repr), or None.
        samples: per pair ``id``, ``scene``, ``cluster`` (its label under ``settings["cluster_by"]``),
            ``image_tokens``, ``text_tokens``, ``cosine`` per layer, ``clip_cosine`` (or None), and its control:
            ``mismatched_with`` (the id of the sample whose text its image is compared with),
            ``mismatched_cosine`` per layer and ``clip_mismatched_cosine`` (None where there is none).
        skipped: samples left out, with the reason.
        settings: how the run was made.
        mismatched_cosine_mean, mismatched_cosine_std: per layer over the mismatched pairs (None if there is none).
        clip_mismatched_cosine_mean: the CLIP cosine of the same mismatched pairs (None without CLIP or pairs).
        contrast: matched minus mismatched cosine per layer over the samples that have both:
            ``tga_fast.stats.Contrast.to_json()`` (paired cluster bootstrap, clusters by ``settings["cluster_by"]``
            of the image's sample) plus ``p_holm`` (Holm over the layers); None without mismatched pairs.
        layers_above_mismatched: the layers whose Holm-adjusted p-value is below 0.05.
        verdict: the finding in one sentence.
        unpaired: ``{"id", "reason"}`` of the samples without a mismatched pair (a run of one sample).
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
    mismatched_cosine_mean: list | None = None
    mismatched_cosine_std: list | None = None
    clip_mismatched_cosine_mean: float | None = None
    contrast: dict | None = None
    layers_above_mismatched: list = field(default_factory=list)
    verdict: str = ""
    unpaired: list = field(default_factory=list)

    def figure(self):
        from tga_fast.analysis.plots import plot_modality_similarity

        return plot_modality_similarity(self)


def _clip_embeddings(clip, images: Sequence, texts: Sequence[str], *, batch_size: int = 32,
                     progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(image embeddings [N, d], text embeddings [N, d], name)`` under a CLIP-style dual encoder (see
    :func:`clip_cosines` for ``clip``)."""
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
    return image_embeddings, text_embeddings, name


def clip_cosines(clip, images: Sequence, texts: Sequence[str], *, batch_size: int = 32,
                 progress: bool = True) -> tuple[torch.Tensor, str]:
    """``(cos [N], name)``: the image-text cosine of each pair under a CLIP-style dual encoder.

    ``clip`` is a local checkpoint folder (loaded with :class:`tga_fast.retrieval.encoders.ImageEncoder` and
    ``TextEncoder``) or a pair ``(image_encoder, text_encoder)`` of objects with ``.encode(...) -> [N, d]``
    L2-normalised embeddings in one space.
    """
    image_embeddings, text_embeddings, name = _clip_embeddings(clip, images, texts, batch_size=batch_size,
                                                               progress=progress)
    return torch.nn.functional.cosine_similarity(image_embeddings, text_embeddings, dim=-1), name


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
    seed: int = 0,
) -> ModalitySimilarityResult:
    """Per-layer cosine of the pooled image tokens (image prompt) and pooled text tokens (text prompt, no image)
    for every sample (toxic or benign: the pairs only need the same meaning), and of each image with another
    sample's text (the mismatched control); two forwards per batch.

    Mismatched pairs are made inside each batch by :func:`tga_fast.analysis.controls.batch_mismatch_partners` (seeded by
    ``seed`` and the batch's ids): a derangement of the batch's texts that gives each image the text of another
    concept (``cluster_by``) wherever the batch allows it, topped up with the previous batch's texts, which are
    carried (``[N+1, b, D]``, one batch) so that a batch of one sample has a partner too. Only the very first batch,
    when it holds one sample, waits for the next batch's texts (its pooled image states, ``[N+1, D]``, are kept
    until then). Memory thus stays at about two batches of pooled states whatever the number of samples.

    Args:
        clip: optional CLIP reference (see :func:`clip_cosines`); its cosine is also taken on the mismatched pairs.
    """
    from tga_fast.analysis.batching import Batches, encode, prepare, run_settings
    from tga_fast.evaluation.data import cluster_label
    from tga_fast.models import capture

    parts, kept, skipped = prepare(model, samples, batch_size, need_image=True)
    if parts.image_token_id is None:
        raise ValueError(f"{parts.model_type} has no image token: modality_similarity needs a vision-language model")
    layers = list(range(parts.num_layers + 1))
    options = dict(with_retrieved=with_retrieved, system_prompt=system_prompt)
    per_sample, pairs = [], []  # pairs: (sample, image) of the rows, for the CLIP reference
    partner_rows: list[int | None] = []  # per row, the row whose text its image is mismatched with
    carried = None  # (text states [N+1, m, D], labels, rows) of the previous batch
    pending = None  # (row, image states [N+1, D], label): a first batch of one sample, until texts of another come
    batches = Batches(kept, batch_size, desc="modality similarity", progress=progress, images=True, unit="pair")
    for batch_samples, images in batches:
        image_encoded = encode(model, processor, [s.to_prompt("image", **options) for s in batch_samples], images)
        text_encoded = encode(model, processor, [s.to_prompt("text", **options) for s in batch_samples])
        b, first_row = len(batch_samples), len(per_sample)
        labels = [cluster_label(s, cluster_by) for s in batch_samples]
        ids = [str(s.id) for s in batch_samples]
        with torch.no_grad():
            with capture(model, layers, image_encoded.spans.select("image")) as image_cap:
                model(**image_encoded.batch, use_cache=False, logits_to_keep=1)
            with capture(model, layers, text_encoded.spans.select("text")) as text_cap:
                model(**text_encoded.batch, use_cache=False, logits_to_keep=1)
            image_states = image_cap.pooled[:, :, 0].float()  # [N+1, b, D]
            text_states = text_cap.pooled[:, :, 0].float()  # [N+1, b, D]
            carried_states, carried_labels, carried_rows = carried or (text_states[:, :0], [], [])
            pool = torch.cat([text_states, carried_states], dim=1)  # [N+1, b+m, D]: this batch's texts first
            partners = batch_mismatch_partners(labels, carried_labels, key="/".join(ids), seed=seed)
            # An image without a partner is compared with its own text here and the column is dropped below.
            pick = torch.tensor([i if p is None else p for i, p in enumerate(partners)], device=pool.device)
            columns = [image_states, image_states]
            texts = [text_states, pool[:, pick]]
            late = None
            if pending is not None:  # the first sample's image, alone in its batch, meets the first other texts
                late = batch_mismatch_partners([pending[2]], labels, key=f"{pending[0]}>{'/'.join(ids)}", seed=seed)[0] - 1
                columns.append(pending[1][:, None])
                texts.append(text_states[:, late : late + 1])
            cos = torch.nn.functional.cosine_similarity(torch.cat(columns, 1), torch.cat(texts, 1), dim=-1)
            cos = cos.cpu()  # [N+1, 2b (+1)]: matched, mismatched (and the waiting image's); one host copy
        image_tokens = image_encoded.spans.select("image").lengths[:, 0].cpu()
        text_tokens = text_encoded.spans.select("text").lengths[:, 0].cpu()
        pool_rows = list(range(first_row, first_row + b)) + list(carried_rows)
        pool_ids = ids + [per_sample[row]["id"] for row in carried_rows]
        for i, sample in enumerate(batch_samples):
            partner = None if partners[i] is None else pool_rows[partners[i]]
            partner_rows.append(partner)
            per_sample.append({
                "id": ids[i],
                "scene": sample.scene,
                "cluster": labels[i],
                "image_tokens": int(image_tokens[i]),
                "text_tokens": int(text_tokens[i]),
                "cosine": cos[:, i].tolist(),
                "clip_cosine": None,
                "mismatched_with": None if partner is None else pool_ids[partners[i]],
                "mismatched_cosine": None if partner is None else cos[:, b + i].tolist(),
                "clip_mismatched_cosine": None,
            })
        if late is not None:
            row = pending[0]
            partner_rows[row] = first_row + late
            per_sample[row]["mismatched_with"] = ids[late]
            per_sample[row]["mismatched_cosine"] = cos[:, 2 * b].tolist()
            pending = None
        if partners[0] is None:  # only a first batch of one sample: nothing to pair it with yet
            pending = (first_row, image_states[:, 0], labels[0])
        carried = (text_states, labels, list(range(first_row, first_row + b)))
        if clip is not None:  # decoded once, kept only when the reference needs them
            pairs += zip(batch_samples, images)
    clip_mean, clip_mismatched_mean, clip_name = None, None, None
    if clip is not None:
        image_embeddings, text_embeddings, clip_name = _clip_embeddings(
            clip, [image for _, image in pairs], [s.text for s, _ in pairs], progress=progress)
        clip_cos = torch.nn.functional.cosine_similarity(image_embeddings, text_embeddings, dim=-1)
        for row, value in zip(per_sample, clip_cos.tolist()):
            row["clip_cosine"] = value
        clip_mean = float(clip_cos.mean())
        matched_rows = [r for r, p in enumerate(partner_rows) if p is not None]
        if matched_rows:
            others = [partner_rows[r] for r in matched_rows]
            clip_mismatched = torch.nn.functional.cosine_similarity(
                image_embeddings[matched_rows], text_embeddings[others], dim=-1)
            for r, value in zip(matched_rows, clip_mismatched.tolist()):
                per_sample[r]["clip_mismatched_cosine"] = value
            clip_mismatched_mean = float(clip_mismatched.mean())
    mean, std = mean_std([s["cosine"] for s in per_sample])

    paired = [s for s in per_sample if s["mismatched_cosine"] is not None]
    unpaired = [{"id": s["id"], "reason": "no other sample's text to pair its image with"}
                for s in per_sample if s["mismatched_cosine"] is None]
    mismatched_mean = mismatched_std = contrast = None
    if paired:
        mismatched_mean, mismatched_std = mean_std([s["mismatched_cosine"] for s in paired])
        contrast = paired_contrast([s["cosine"] for s in paired], [s["mismatched_cosine"] for s in paired],
                                   [s["cluster"] for s in paired], cluster_field=cluster_by, seed=seed)
    above = columns_above(contrast, layers)
    return ModalitySimilarityResult(
        layers=layers,
        cosine_mean=mean,
        cosine_std=std,
        clip_cosine_mean=clip_mean,
        clip_model=clip_name,
        samples=per_sample,
        skipped=skipped + batches.failed,
        settings=run_settings(model, batch_size, with_retrieved=with_retrieved, system_prompt=system_prompt,
                              cluster_by=cluster_by, seed=seed),
        mismatched_cosine_mean=mismatched_mean,
        mismatched_cosine_std=mismatched_std,
        clip_mismatched_cosine_mean=clip_mismatched_mean,
        contrast=contrast,
        layers_above_mismatched=above,
        verdict=_verdict(contrast, layers, above),
        unpaired=unpaired,
    )


def _verdict(contrast: dict | None, layers: list, above: list) -> str:
    if contrast is None:
        return "no verdict: one pair only, so no other sample's text to mismatch its image with"
    how = (f"(Holm, alpha {ALPHA:g}; {contrast['n_x']} pairs in {contrast['clusters_x']} clusters"
           f"{power_note(contrast)})")
    subject = "image and text states of the same meaning are"
    if not above:
        return f"{subject} not closer than mismatched pairs at any layer {how}"
    below = [layer for layer in layers if layer not in above]
    if not below:
        return f"{subject} closer than mismatched pairs at every layer ({describe_runs(layers)}) {how}"
    return (f"{subject} closer than mismatched pairs at layers {describe_runs(above)}, not at "
            f"{describe_runs(below)} {how}")


@dataclass(frozen=True)
class ModalitySimilarityOptions(AnalysisOptions):
    """The options of :func:`modality_similarity` beyond the common ones."""

    clip: str | None = option(None, "local CLIP-style checkpoint folder for the reference line")
    seed: int = option(0, "seed of the mismatched pairs and of the bootstrap")

    def needs_images(self) -> bool:
        return True


register("modality_similarity", modality_similarity, ModalitySimilarityResult, ModalitySimilarityOptions,
         "3D: per-layer cosine of the pooled image and text states of the same meaning")
