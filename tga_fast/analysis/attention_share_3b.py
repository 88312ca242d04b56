"""Attention share R on the toxic tokens, per layer (METHOD.md 3 B), beside its control.

At each decoder block k (1-based: the block that produces ``hidden_states[k]``), the share of the last prompt
token's attention probability that falls on the toxic-word tokens C (the prompt's marks), over the whole causal
row, averaged over heads. Measured inside the model's own forward with the ``attention_share`` op
(:func:`tga_fast.models.attention_shares`): only the last row is scored, never a ``T x T`` map, and
``output_attentions`` is never used.

The control (METHOD.md 3, "Controls"): the share of the same row on as many non-toxic tokens of the same prompt's
text and question (:func:`tga_fast.analysis.controls.control_positions`), read by a second probe in the same
forward. The result reports toxic minus control per block with a paired cluster-bootstrap interval, Holm over the
blocks, and a one-sentence verdict.

    result = attention_share(model, processor, load_eval_set("eval.jsonl").samples)
    result.share_mean, result.control_share_mean     # [N] over samples
    result.verdict                                   # "the last token attends to the toxic words more than ..."
    result.save("out/")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from tga_fast.analysis.controls import (
    ALPHA,
    columns_above,
    control_positions,
    describe_runs,
    paired_contrast,
    power_note,
)
from tga_fast.analysis.options import AnalysisOptions, option
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, mean_std

__all__ = ["AttentionShareOptions", "AttentionShareResult", "attention_share"]

USER_CONTENT = ("text", "question")  # the spans a control token is drawn from: the request's own words


@dataclass
class AttentionShareResult(AnalysisResult):
    """Per-block attention share of the last prompt token on the toxic tokens, and on a control span.

    Attributes:
        blocks: decoder blocks ``[1, ..., N]`` (block k produces ``hidden_states[k]``, HF numbering); every other
            per-block list is aligned with it.
        share_mean, share_std: per block over samples (each sample's share averaged over heads).
        share_q10, share_q90: per layer, the 10th and 90th percentile over samples.
        uniform_share_mean: over samples, |C| / (number of keys the last token sees): the share if attention
            were uniform, a reference level for the curve.
        samples: per sample ``id``, ``scene``, ``cluster`` (its label under ``settings["cluster_by"]``),
            ``toxic_tokens`` (|C|), ``visible_tokens``, ``share`` per block (head mean), ``share_per_head``
            (``[N][H]``), ``control_positions`` (the |C| control token positions, counted from the prompt's first
            token, i.e. indices into the unpadded prompt) and ``control_share`` per block (head mean); both None
            when the prompt has too few non-toxic tokens.
        skipped: samples left out (benign controls, no toxic word marked), with the reason.
        settings: how the run was made.
        control_share_mean, control_share_std: per block over the samples that have a control (None if none has).
        contrast: toxic minus control share per block over those samples: ``tga_fast.stats.Contrast.to_json()``
            (paired cluster bootstrap, clusters by ``settings["cluster_by"]``) plus ``p_holm`` (Holm over the
            blocks); None when no sample has a control.
        blocks_above_control: the blocks whose Holm-adjusted p-value is below 0.05.
        verdict: the finding in one sentence.
        no_control: ``{"id", "reason"}`` of the samples measured without a control (too few non-toxic tokens).
    """

    kind = "attention_share"

    blocks: list
    share_mean: list
    share_std: list
    share_q10: list
    share_q90: list
    uniform_share_mean: float
    samples: list
    skipped: list
    settings: dict
    control_share_mean: list | None = None
    control_share_std: list | None = None
    contrast: dict | None = None
    blocks_above_control: list = field(default_factory=list)
    verdict: str = ""
    no_control: list = field(default_factory=list)

    def figure(self):
        from tga_fast.analysis.plots import plot_attention_share

        return plot_attention_share(self)


def attention_share(
    model,
    processor,
    samples: Sequence,
    *,
    batch_size: int = 8,
    progress: bool = True,
    with_retrieved: bool = False,
    system_prompt: str | None = None,
    cluster_by: str = "concept",
    seed: int = 0,
) -> AttentionShareResult:
    """Measures, for each toxic sample as text (``to_prompt("text")``, toxic words marked), the last prompt
    token's attention share on the marked tokens C at every decoder block, and on a control span of |C| other
    tokens of the same prompt's text and question; one forward per batch.

    The control span is drawn by :func:`tga_fast.analysis.controls.control_positions` (seeded by ``seed`` and the
    sample id: a contiguous run of |C| non-toxic tokens when there is one, else |C| scattered ones; never the last
    position). Both shares come from two share probes open on the same forward, so they see exactly the same
    inputs, padding and attention, at the cost of one more last-row share per block instead of a second forward.

    Samples that mark no toxic word, and benign controls, are skipped (listed in ``skipped``); a sample with fewer
    than |C| non-toxic candidates keeps its share but has no control (listed in ``no_control``).
    """
    from tga_fast.analysis.batching import Batches, encode, prepare, run_settings
    from tga_fast.evaluation.data import cluster_label
    from tga_fast.models import attention_shares

    parts, kept, skipped = prepare(model, samples, batch_size, toxic_only=True, need_marks=True)
    blocks = list(range(1, parts.num_layers + 1))
    per_sample, no_control = [], []
    for batch_samples, _ in Batches(kept, batch_size, desc="attention share", progress=progress):
        prompts = [s.to_prompt("text", with_retrieved=with_retrieved, system_prompt=system_prompt)
                   for s in batch_samples]
        encoded = encode(model, processor, prompts)
        mask = encoded.batch["attention_mask"].bool()  # [b, T]
        device, seq_len = mask.device, mask.shape[1]
        last = encoded.last_positions  # [b]
        positions = torch.arange(seq_len, device=device)
        visible = mask & (positions[None, :] <= last[:, None])  # the keys the last token sees
        toxic_mask = encoded.marked.to(device) & visible
        candidates = (encoded.spans.to(device).mask(seq_len, *USER_CONTENT) & visible & ~toxic_mask
                      & (positions[None, :] != last[:, None]))  # [b, T]
        first = mask.to(torch.int64).argmax(dim=1)  # [b] the first real token (padding is on the left)
        # What the control draw needs, copied to the host once per batch: per sample |C|, keys seen, first and last
        # position, and the candidate mask; the draws below then touch no device tensor.
        counts = torch.stack([toxic_mask.sum(dim=1), visible.sum(dim=1), first, last]).cpu()  # [4, b]
        candidates = candidates.cpu()
        control_mask = torch.zeros(len(batch_samples), seq_len, dtype=torch.bool)  # [b, T], host
        chosen = []
        for i, sample in enumerate(batch_samples):
            toxic_count, start, end = int(counts[0, i]), int(counts[2, i]), int(counts[3, i]) + 1
            # Drawn from the prompt's own positions (not the padded batch's), so batching does not change the draw.
            picked = control_positions(candidates[i, start:end], toxic_count, key=str(sample.id), seed=seed)
            chosen.append(picked)
            if picked is not None:
                control_mask[i, torch.tensor(picked, dtype=torch.int64) + start] = True
        with torch.no_grad():
            rows = last[:, None]  # [b, 1]
            with attention_shares(model, toxic_mask, rows, blocks=blocks) as toxic_probe, \
                    attention_shares(model, control_mask.to(device), rows, blocks=blocks) as control_probe:
                model(**encoded.batch, use_cache=False, logits_to_keep=1)
            shares = torch.stack([toxic_probe.share[..., 0], control_probe.share[..., 0]]).float().cpu()  # [2, N, b, H]
        for i, sample in enumerate(batch_samples):
            share, control = shares[0, :, i], shares[1, :, i]  # [N, H]
            toxic_count = int(counts[0, i])
            if chosen[i] is None:
                no_control.append({"id": str(sample.id), "reason": f"fewer than {toxic_count} non-toxic tokens in "
                                                                   f"its {' and '.join(USER_CONTENT)}"})
            per_sample.append({
                "id": str(sample.id),
                "scene": sample.scene,
                "cluster": cluster_label(sample, cluster_by),
                "toxic_tokens": toxic_count,
                "visible_tokens": int(counts[1, i]),
                "share": share.mean(dim=-1).tolist(),
                "share_per_head": share.tolist(),
                "control_positions": chosen[i],
                "control_share": None if chosen[i] is None else control.mean(dim=-1).tolist(),
            })
    rows = torch.tensor([s["share"] for s in per_sample], dtype=torch.float64)  # [n, N]
    mean, std = mean_std(rows.tolist())
    quantiles = torch.quantile(rows, torch.tensor([0.1, 0.9], dtype=torch.float64), dim=0)
    uniform = sum(s["toxic_tokens"] / s["visible_tokens"] for s in per_sample) / len(per_sample)

    paired = [s for s in per_sample if s["control_share"] is not None]
    control_mean = control_std = contrast = None
    if paired:
        control_mean, control_std = mean_std([s["control_share"] for s in paired])
        contrast = paired_contrast([s["share"] for s in paired], [s["control_share"] for s in paired],
                                   [s["cluster"] for s in paired], cluster_field=cluster_by, seed=seed)
    above = columns_above(contrast, blocks)
    return AttentionShareResult(
        blocks=blocks,
        share_mean=mean,
        share_std=std,
        share_q10=quantiles[0].tolist(),
        share_q90=quantiles[1].tolist(),
        uniform_share_mean=uniform,
        samples=per_sample,
        skipped=skipped,
        settings=run_settings(model, batch_size, condition="text", with_retrieved=with_retrieved,
                              system_prompt=system_prompt, cluster_by=cluster_by, seed=seed),
        control_share_mean=control_mean,
        control_share_std=control_std,
        contrast=contrast,
        blocks_above_control=above,
        verdict=_verdict(contrast, above, len(per_sample)),
        no_control=no_control,
    )


def _verdict(contrast: dict | None, above: list, measured: int) -> str:
    if contrast is None:
        return (f"no verdict: none of the {measured} prompts has as many non-toxic words as toxic ones, so there is "
                f"no control span")
    where = f"blocks {describe_runs(above)}" if above else "no block"
    return (f"the last token attends to the toxic words more than to equally many other words at {where} "
            f"(Holm, alpha {ALPHA:g}; {contrast['n_x']} prompts in {contrast['clusters_x']} clusters"
            f"{power_note(contrast)})")


@dataclass(frozen=True)
class AttentionShareOptions(AnalysisOptions):
    """The options of :func:`attention_share` beyond the common ones."""

    seed: int = option(0, "seed of the control spans (with each sample id) and of the bootstrap")


register("attention_share", attention_share, AttentionShareResult, AttentionShareOptions,
         "3B: the last prompt token's attention share on the toxic words, per decoder block, against as many "
         "other words")
