"""The DSR figures: one bar per scene with its 95% interval (clustered as the run chose; the method is written
under the axes), the overall DSR as a line with its band, the benign false-refusal rate as a grey bar when the
set has benign samples; and the paired comparison of two results (A and B per scene, and B - A with its interval).

Drawn with matplotlib's object API (a ``Figure`` that pyplot never sees): no backend is chosen or switched, so a
notebook's inline backend is left as it was, and nothing needs closing.
"""

from __future__ import annotations

from matplotlib.figure import Figure

__all__ = ["comparison_figure", "dsr_figure"]


def dsr_figure(result, *, title: str | None = None) -> Figure:
    """The figure of ``result`` (a :class:`~tga_fast.evaluation.dsr.DSRResult`)."""
    names = list(result.scenes)
    rates = [result.scenes[n] for n in names]
    colors = ["tab:blue"] * len(names)
    if result.false_refusal is not None:
        names.append("benign\n(false refusal)")
        rates.append(result.false_refusal)
        colors.append("tab:gray")
    heights = [r.rate or 0.0 for r in rates]
    errors = [[h - r.low for h, r in zip(heights, rates)], [r.high - h for h, r in zip(heights, rates)]]

    figure = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(names)), 3.6), dpi=120)
    axes = figure.subplots()
    positions = range(len(names))
    axes.bar(positions, heights, yerr=errors, capsize=4, color=colors, alpha=0.85)
    for x, rate in zip(positions, rates):
        axes.annotate(f"{rate.refused}/{rate.total}", (x, 0.02), ha="center", fontsize=7, color="black")
    overall = result.overall
    if overall.rate is not None:
        axes.axhline(overall.rate, color="tab:red", linestyle="--", linewidth=1.2,
                     label=f"overall DSR {overall.rate:.2f} ({overall.refused}/{overall.total})")
        axes.axhspan(overall.low, overall.high, color="tab:red", alpha=0.1,
                     label=f"95% interval ({overall.interval_note})")
        axes.legend(loc="upper right", fontsize=7)
    crowded = len(names) > 4
    axes.set_xticks(list(positions), names, rotation=30 if crowded else 0, ha="right" if crowded else "center",
                    fontsize=8)
    axes.set_ylim(0.0, 1.05)
    axes.set_ylabel("refusal rate (DSR on toxic samples)")
    settings = result.settings or {}
    axes.set_title(title or f"DSR, {settings.get('condition', '?')} condition"
                   + (" + retrieved text" if settings.get("with_retrieved") else ""), fontsize=9)
    note = f"95% intervals: {overall.interval_note}"
    if overall.cluster_field is not None:  # a scene's interval counts only the clusters of its own samples
        note += " (overall); each scene's over its own clusters"
    _note(figure, note)
    return figure


def comparison_figure(comparison, *, title: str | None = None) -> Figure:
    """The figure of ``comparison`` (a :class:`~tga_fast.evaluation.compare.DSRComparison`): left, the DSR of A
    and B on the shared toxic samples per scene and overall, side by side with their clustered intervals; right,
    B - A per scene and overall with its paired cluster-bootstrap interval (a filled marker: significant, Holm over
    scenes)."""
    rows = {**comparison.scenes, "overall": comparison.overall}
    names = list(rows)
    figure = Figure(figsize=(max(7.0, 2.0 + 1.4 * len(names)), 3.8), dpi=120)
    bars, changes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.38
    for offset, side, color in ((-width / 2, "a", "tab:gray"), (width / 2, "b", "tab:blue")):
        estimates = [rows[n][side] for n in names]
        heights = [e["value"] for e in estimates]
        errors = [[h - e["low"] for h, e in zip(heights, estimates)],
                  [e["high"] - h for h, e in zip(heights, estimates)]]
        label = f"{side.upper()}: {getattr(comparison, side)['name']}"
        bars.bar([i + offset for i in range(len(names))], heights, width, yerr=errors, capsize=3, color=color,
                 alpha=0.85, label=label)
    bars.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0, fontsize=8,
                    ha="right" if len(names) > 4 else "center")
    bars.set_ylim(0.0, 1.05)
    bars.set_ylabel("DSR on shared toxic samples")
    bars.legend(loc="upper right", fontsize=7)
    for i, name in enumerate(names):
        # B - A, from the stats module's A - B: the interval flips with the sign.
        difference = rows[name]["difference"]
        value, low, high = -difference["value"], -difference["high"], -difference["low"]
        significant = rows[name]["significant"]
        changes.errorbar([i], [value], yerr=[[value - low], [high - value]], fmt="o", capsize=4,
                         color="tab:red" if significant else "tab:gray",
                         markerfacecolor="tab:red" if significant else "white")
    changes.axhline(0.0, color="black", linewidth=0.8)
    changes.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0, fontsize=8,
                       ha="right" if len(names) > 4 else "center")
    changes.set_xlim(-0.5, len(names) - 0.5)
    changes.set_ylim(-1.05, 1.05)
    changes.set_ylabel("B - A (paired)")
    figure.suptitle(title or f"DSR, A vs B on {comparison.n_shared} shared toxic samples", fontsize=9)
    _note(figure, f"95% intervals clustered by {comparison.cluster_by}; filled: significant (McNemar p < 0.05, Holm "
                  "over scenes, and the interval excludes 0)")
    return figure


def _note(figure: Figure, text: str) -> None:
    """``text`` in small print under the axes: how the intervals were made belongs on the figure."""
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.text(0.01, 0.01, text, fontsize=6.5, color="dimgray", ha="left", va="bottom", wrap=True)
