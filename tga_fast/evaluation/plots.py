"""The DSR figure: one bar per scene with its Wilson 95% interval, the overall DSR as a line with its band, and
the benign false-refusal rate as a grey bar when the set has benign samples.

Drawn with matplotlib's object API (a ``Figure`` that pyplot never sees): no backend is chosen or switched, so a
notebook's inline backend is left as it was, and nothing needs closing.
"""

from __future__ import annotations

from matplotlib.figure import Figure

__all__ = ["dsr_figure"]


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
        axes.axhspan(overall.low, overall.high, color="tab:red", alpha=0.1, label="95% Wilson interval")
        axes.legend(loc="upper right", fontsize=7)
    crowded = len(names) > 4
    axes.set_xticks(list(positions), names, rotation=30 if crowded else 0, ha="right" if crowded else "center",
                    fontsize=8)
    axes.set_ylim(0.0, 1.05)
    axes.set_ylabel("refusal rate (DSR on toxic samples)")
    settings = result.settings or {}
    axes.set_title(title or f"DSR, {settings.get('condition', '?')} condition"
                   + (" + retrieved text" if settings.get("with_retrieved") else ""), fontsize=9)
    figure.tight_layout()
    return figure
