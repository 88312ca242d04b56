"""The controls of the two DSR sweeps (METHOD.md 3, "Controls") and the paired tests that compare each window
with them.

- 3C (:mod:`~tga_fast.analysis.knockout_sweep_3c`): :func:`control_token_mask` picks, per prompt, as many
  non-toxic user tokens as the prompt has toxic ones, to knock out instead of the toxic tokens.
- 3E (:mod:`~tga_fast.analysis.steering_sweep_3e`): :func:`random_like` gives a random vector of the text state's
  norm, :func:`run_mismatch_partners` the sample whose text state is added instead of the sample's own.
- Both: :func:`compare_windows` runs one paired comparison per window (exact McNemar, paired cluster-bootstrap
  interval of the difference) and adjusts the McNemar p-values over the windows with Holm.

Every random choice is seeded by ``(seed, sample id)`` (:func:`sample_generator`), so a sample gets the same control
whatever batch it lands in and whatever else is in the run.

3B's control (:func:`tga_fast.analysis.controls.control_positions`) is a contiguous span where one fits: it stands
for "an equally long stretch of other words" to compare attention with. 3C's is a random set: knocking out a
random sample of as many other tokens is what separates "these tokens" from "any tokens this many".
"""

from __future__ import annotations

import hashlib
import logging
from typing import Hashable, Sequence

import torch

from tga_fast.analysis.controls import ALPHA  # one family-wise level for every analysis' verdict

__all__ = [
    "ALPHA",
    "compare_windows",
    "control_token_mask",
    "run_mismatch_partners",
    "percent",
    "random_like",
    "sample_generator",
    "window_comparisons",
    "window_label",
    "window_rates",
    "window_verdict",
]

logger = logging.getLogger(__name__)

CONTROL_PIECES = ("text", "question")  # the user's own content: where the control tokens are drawn from


def sample_generator(seed: int, sample_id: str, purpose: str) -> torch.Generator:
    """A CPU generator seeded by ``(seed, sample_id, purpose)`` through a stable hash (Python's ``hash`` of a str
    changes between interpreters), so a sample's draw does not depend on its batch or on the run's other samples."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{purpose}\x00{sample_id}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def control_token_mask(encoded, sample_ids: Sequence[str], seed: int) -> tuple[torch.Tensor, list[list[int]]]:
    """The control tokens of 3C: per prompt, as many tokens as it has toxic (marked) tokens, drawn at random among
    its text and question tokens that are neither toxic nor the last prompt position.

    Args:
        encoded: :class:`~tga_fast.models.prompts.EncodedPrompts` (``marked`` ``[B, T]``, spans ``text`` and
            ``question``, ``attention_mask`` ``[B, T]``), padded on either side.
        sample_ids: ``[B]`` the samples' ids (with ``seed``, what the draw depends on).

    Returns:
        ``(mask, positions)``: bool ``[B, T]`` on ``marked``'s device (what :func:`tga_fast.models.knockout`
        takes), and per prompt the chosen positions counted from its first non-padding token (so they are the same
        in any batch). A prompt with fewer candidates than toxic tokens gets all of them (logged).
    """
    marked = encoded.marked.bool()
    batch, seq_len = marked.shape
    if len(sample_ids) != batch:
        raise ValueError(f"{len(sample_ids)} sample ids for a batch of {batch} prompts")
    real = encoded.batch["attention_mask"].to(marked.device).bool()
    user = encoded.spans.select(*CONTROL_PIECES).to(marked.device).mask(seq_len)
    candidates = user & real & ~marked
    # The last prompt position is where the answer starts: blocking it would cut the answer's own context.
    candidates[torch.arange(batch, device=marked.device), encoded.last_positions.to(marked.device)] = False
    mask = torch.zeros_like(marked)
    positions = []
    for b, sample_id in enumerate(sample_ids):
        # Candidates in position order: the same list (shifted) whatever the padding, so the draw is too.
        pool = candidates[b].nonzero()[:, 0].cpu()
        wanted = int(marked[b].sum())
        if len(pool) < wanted:
            logger.warning("sample %r: %d toxic tokens but only %d other user tokens; all of them are the control",
                           sample_id, wanted, len(pool))
        order = torch.randperm(len(pool), generator=sample_generator(seed, str(sample_id), "control tokens"))
        chosen = pool[order[:wanted]].sort().values
        mask[b, chosen.to(marked.device)] = True
        first = int(real[b].nonzero()[0, 0])
        positions.append([int(p) - first for p in chosen])
    return mask, positions


def random_like(states: torch.Tensor, sample_ids: Sequence[str], seed: int) -> torch.Tensor:
    """The random-vector control of 3E: ``[L, b, D]`` vectors, each of the norm of ``states[l, i]`` (``[L, b, D]``,
    the text states at L layers), along one seeded Gaussian direction per sample.

    One direction per sample for all its layers, not a fresh one per layer: the residual stream carries what is
    added at one layer into the next, and adjacent layers' text states point much the same way, so the text state
    added over a window accumulates along about one direction; independent directions per layer would partly cancel
    and make a weaker control. Norms are matched in fp32, the result is cast to ``states``' dtype.
    """
    count, batch, dim = states.shape
    if len(sample_ids) != batch:
        raise ValueError(f"{len(sample_ids)} sample ids for {batch} text states")
    directions = torch.stack([
        torch.randn(dim, generator=sample_generator(seed, str(i), "random vector"), dtype=torch.float32)
        for i in sample_ids
    ]).to(states.device)  # [b, D]
    directions = directions / directions.norm(dim=-1, keepdim=True)
    norms = states.float().norm(dim=-1, keepdim=True)  # [L, b, 1]
    return (norms * directions[None]).to(states.dtype)


def run_mismatch_partners(clusters: Sequence[Hashable]) -> list[int | None]:
    """For each sample, the index of the sample whose text state is its mismatched control: the next one after it
    (cyclically, over the whole run, not only its batch) with another cluster label; when every other sample shares
    its label, the next sample; None for a run of one sample."""
    count = len(clusters)
    if count < 2:
        return [None] * count
    labels = list(clusters) * 2  # the run twice over: "cyclically after i" is "after i" in the doubled list
    # following[j]: the first index after j in the doubled list with another label than j's (None: none), filled
    # from the end in one pass: it is j + 1 when the label changes there, else what j + 1 has.
    following: list[int | None] = [None] * len(labels)
    for j in range(len(labels) - 2, -1, -1):
        following[j] = j + 1 if labels[j + 1] != labels[j] else following[j + 1]
    return [following[i] % count if following[i] is not None and following[i] - i < count else (i + 1) % count
            for i in range(count)]


def compare_windows(higher: Sequence[Sequence[bool]], lower: Sequence[Sequence[bool]], clusters: Sequence[Hashable],
                    *, cluster_field: str, difference_is: str, seed: int = 0) -> list[dict]:
    """One paired comparison per window, McNemar p-values Holm-adjusted over the windows.

    Args:
        higher, lower: per window, the per-sample verdicts (True = refused) of two conditions on the same samples:
            ``higher`` is the one the claim says refuses more (the control, when the claim is that the knockout
            lowers the DSR; the steered run, when it is that steering raises it). ``[W][n]`` each, or a single
            ``[n]`` list in place of ``[W][n]`` (the baseline, the same in every window).
        clusters: ``[n]`` the samples' cluster labels (``cluster_field`` names what they are).
        difference_is: the difference in words, e.g. ``"control - knockout"``.

    Returns:
        Per window ``{"difference_is", "difference", "mcnemar", "p_holm", "significant"}``: ``difference`` is
        DSR(higher) - DSR(lower) (:class:`~tga_fast.stats.Estimate` as JSON, a paired cluster-bootstrap interval), so
        a positive value is the claimed effect; ``mcnemar`` the exact two-sided test's counts (``a_only``: refused
        under ``higher`` only) and ``p_value``; ``p_holm`` the Holm-adjusted p-value over the windows;
        ``significant``: ``p_holm <= ALPHA`` and the clustered interval of the difference above zero (McNemar
        treats the pairs as independent; the interval does not, so a window whose verdicts move together in a few
        clusters is not called significant on McNemar's count of pairs alone).
    """
    from tga_fast.stats import holm, paired_comparison

    swept = [side for side in (higher, lower) if _per_window(side)]
    if not swept:
        raise ValueError("compare_windows needs per-window verdicts ([W][n]) on at least one side")
    highs = list(higher) if _per_window(higher) else [list(higher)] * len(swept[0])
    lows = list(lower) if _per_window(lower) else [list(lower)] * len(swept[0])
    if len(highs) != len(lows):
        raise ValueError(f"{len(highs)} and {len(lows)} windows to compare")
    compared = [paired_comparison(h, lo, clusters, cluster_field=cluster_field, seed=seed) for h, lo in zip(highs, lows)]
    adjusted = holm([c.p_value for c in compared])
    return [{"difference_is": difference_is, "difference": c.difference.to_json(), "mcnemar": dict(c.mcnemar),
             "p_holm": p, "significant": bool(p <= ALPHA and c.difference.low > 0)}
            for c, p in zip(compared, adjusted)]


def window_rates(rows: Sequence[dict], conditions: Sequence[str], count: int, clusters: Sequence[Hashable],
                 cluster_field: str) -> tuple[dict, dict]:
    """The clustered DSRs of a sweep's per-sample rows (each with ``scene``, ``baseline`` ``{"verdict", ...}`` and,
    per condition, a list of ``count`` outcomes, one per window; an empty list: the condition did not run).

    Returns ``(rates, scenes)``: ``rates["baseline"]`` and ``rates[condition]`` (a list per window, ``[]`` when it
    did not run) as :func:`~tga_fast.evaluation.rates.rate_dict` s, and the same per scene in ``scenes``.
    """
    from tga_fast.evaluation.rates import dsr_from_verdicts, rate_dict

    scene_names = [row["scene"] for row in rows]

    def dsr(verdicts):
        overall, by_scene = dsr_from_verdicts(verdicts, scene_names, list(clusters), cluster_field)
        return rate_dict(overall), {scene: rate_dict(rate) for scene, rate in by_scene.items()}

    rates, scenes = {}, {}
    rates["baseline"], scenes["baseline"] = dsr([row["baseline"]["verdict"] for row in rows])
    for condition in conditions:
        ran = bool(rows) and len(rows[0][condition]) == count
        pairs = [dsr([row[condition][i]["verdict"] for row in rows]) for i in range(count)] if ran else []
        rates[condition], scenes[condition] = [p[0] for p in pairs], [p[1] for p in pairs]
    return rates, scenes


def window_comparisons(verdicts: dict, comparisons: Sequence[tuple[str, str, str]], count: int,
                       clusters: Sequence[Hashable], cluster_field: str, seed: int = 0) -> list[dict]:
    """Per window ``{name: comparison}`` (:func:`compare_windows`) for each ``(name, higher, lower)`` of
    ``comparisons`` whose two conditions are in ``verdicts`` (``{condition: [W][n]}``, ``"baseline": [n]``)."""
    per_window: list[dict] = [{} for _ in range(count)]
    for name, higher, lower in comparisons:
        if higher in verdicts and lower in verdicts:
            compared = compare_windows(verdicts[higher], verdicts[lower], clusters, cluster_field=cluster_field,
                                       difference_is=f"{higher} - {lower}", seed=seed)
            for window, comparison in zip(per_window, compared):
                window[name] = comparison
    return per_window


def _per_window(verdicts) -> bool:
    """Whether ``verdicts`` is ``[W][n]`` (a list of per-window lists) rather than one ``[n]`` list."""
    return bool(verdicts) and isinstance(verdicts[0], (list, tuple))


def percent(rate: dict) -> str:
    """A rate dict's rate as ``"45%"`` (``"n/a"`` without samples)."""
    return "n/a" if rate["rate"] is None else f"{rate['rate']:.0%}"


def window_verdict(claim: str, tests: str, windows: Sequence[Sequence[int]], significant: Sequence[int], rates: dict,
                   effect: str, controls: Sequence[str], *, unit: str, where: str, without: str) -> str:
    """A sweep's one sentence: ``claim`` and the windows where it holds, each with the DSR without intervention,
    under ``effect`` (the swept condition) and under each of ``controls``, or "in no window"; ``tests`` says how
    significance was decided. ``rates``: the sweep's rates (``"baseline"`` and a list per condition); ``unit``:
    "block" or "layer"; ``where``: "only in" / "only at"; ``without``: what the baseline lacks ("intervention")."""
    if not significant:
        return f"{claim} in no window ({tests}; DSR without {without} {percent(rates['baseline'])})"
    where = "in every window:" if len(significant) == len(windows) else where
    found = []
    for i in significant:
        versus = ", ".join(f"{c} {percent(rates[c][i])}" for c in controls)
        found.append(f"{window_label(windows[i], unit)} (DSR {percent(rates['baseline'])} → "
                     f"{percent(rates[effect][i])}{' vs ' + versus if versus else ''})")
    return f"{claim} {where} {', '.join(found)} ({tests})"


def window_label(bounds: Sequence[int], unit: str) -> str:
    """``"blocks 1-5"`` or ``"block 3"`` (``unit`` singular: "block", "layer")."""
    first, last = bounds
    return f"{unit}s {first}-{last}" if first != last else f"{unit} {first}"
