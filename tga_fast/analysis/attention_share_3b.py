"""Attention share R on the toxic tokens, per layer (METHOD.md 3 B).

At each decoder block k (1-based: the block that produces ``hidden_states[k]``), the share of the last prompt
token's attention probability that falls on the toxic-word tokens C (the prompt's marks), over the whole causal
row, averaged over heads. Measured inside the model's own forward with the ``attention_share`` op
(:func:`tga_fast.models.attention_shares`): only the last row is scored, never a ``T x T`` map, and
``output_attentions`` is never used.

    result = attention_share(model, processor, load_eval_set("eval.jsonl").samples)
    result.share_mean      # [N] over samples
    result.save("out/")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tga_fast.analysis.options import AnalysisOptions
from tga_fast.analysis.registry import register
from tga_fast.analysis.results import AnalysisResult, mean_std

__all__ = ["AttentionShareResult", "attention_share"]


@dataclass
class AttentionShareResult(AnalysisResult):
    """Per-block attention share of the last prompt token on the toxic tokens.

    Attributes:
        blocks: decoder blocks ``[1, ..., N]`` (block k produces ``hidden_states[k]``, HF numbering); every other
            per-block list is aligned with it.
        share_mean, share_std: per block over samples (each sample's share averaged over heads).
        share_q10, share_q90: per layer, the 10th and 90th percentile over samples.
        uniform_share_mean: over samples, |C| / (number of keys the last token sees): the share if attention
            were uniform, a reference level for the curve.
        samples: per sample ``id``, ``scene``, ``toxic_tokens`` (|C|), ``visible_tokens``, ``share`` per layer
            (head mean) and ``share_per_head`` (``[N][H]``).
        skipped: samples left out (benign controls, no toxic word marked), with the reason.
        settings: how the run was made.
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
) -> AttentionShareResult:
    """Measures, for each toxic sample as text (``to_prompt("text")``, toxic words marked), the last prompt
    token's attention share on the marked tokens at every decoder block; one forward per batch.

    Samples that mark no toxic word, and benign controls, are skipped (listed in ``skipped``).
    """
    from tga_fast.analysis.batching import Batches, encode, prepare, run_settings
    from tga_fast.models import attention_shares

    parts, kept, skipped = prepare(model, samples, batch_size, toxic_only=True, need_marks=True)
    blocks = list(range(1, parts.num_layers + 1))
    per_sample = []
    for batch_samples, _ in Batches(kept, batch_size, desc="attention share", progress=progress):
        prompts = [s.to_prompt("text", with_retrieved=with_retrieved, system_prompt=system_prompt)
                   for s in batch_samples]
        encoded = encode(model, processor, prompts)
        last = encoded.last_positions  # [b]
        with torch.no_grad():
            with attention_shares(model, encoded.marked, last[:, None], blocks=blocks) as probe:
                model(**encoded.batch, use_cache=False, logits_to_keep=1)
            share = probe.share[..., 0].float().cpu()  # [N, b, H]
        mask = encoded.batch["attention_mask"].bool()
        positions = torch.arange(mask.shape[1], device=mask.device)
        visible = mask & (positions[None, :] <= last[:, None])  # the keys the last token sees
        toxic = (encoded.marked & visible).sum(dim=1).cpu()
        seen = visible.sum(dim=1).cpu()
        for i, sample in enumerate(batch_samples):
            per_sample.append({
                "id": str(sample.id),
                "scene": sample.scene,
                "toxic_tokens": int(toxic[i]),
                "visible_tokens": int(seen[i]),
                "share": share[:, i].mean(dim=-1).tolist(),
                "share_per_head": share[:, i].tolist(),
            })
    rows = torch.tensor([s["share"] for s in per_sample], dtype=torch.float64)  # [n, N]
    mean, std = mean_std(rows.tolist())
    quantiles = torch.quantile(rows, torch.tensor([0.1, 0.9], dtype=torch.float64), dim=0)
    uniform = sum(s["toxic_tokens"] / s["visible_tokens"] for s in per_sample) / len(per_sample)
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
                              system_prompt=system_prompt),
    )


register("attention_share", attention_share, AttentionShareResult, AnalysisOptions,
         "3B: the last prompt token's attention share on the toxic words, per decoder block")
