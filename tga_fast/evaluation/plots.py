"""The DSR figure: one bar per scene with its Wilson 95% interval, the overall DSR as a line with its band, and
the benign false-refusal rate as a grey bar when the set has benign samples."""

from __future__ import annotations

from pathlib import Path

__all__ = ["plot_dsr"]


def plot_dsr(result, path, *, title: str | None = None) -> Path:
    """Draws ``result`` (a :class:`~tga_fast.evaluation.dsr.DSRResult`) into the PNG ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.scenes)
    rates = [result.scenes[n] for n in names]
    colors = ["tab:blue"] * len(names)
    if result.false_refusal is not None:
        names.append("benign\n(false refusal)")
        rates.append(result.false_refusal)
        colors.append("tab:gray")
    heights = [r.rate or 0.0 for r in rates]
    errors = [[h - r.low for h, r in zip(heights, rates)], [r.high - h for h, r in zip(heights, rates)]]

    figure, axes = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(names)), 3.6), dpi=120)
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
    path = Path(path)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
