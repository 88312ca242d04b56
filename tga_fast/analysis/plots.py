"""One figure per analysis, drawn from its result alone (so a saved result.json can be re-plotted), like the
paper's: per-layer curves with their spread, the safety-layer range shaded, DSR per window of layers.

Drawn with matplotlib's object API (a ``Figure`` that pyplot never sees): no backend is chosen or switched, so a
notebook's inline backend is left as it was, and nothing needs closing.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_attention_share",
    "plot_knockout_sweep",
    "plot_modality_similarity",
    "plot_safety_layers",
    "plot_steering_sweep",
]


def _axes(figsize=(7, 4)):
    """A new figure (150 dpi when saved) and its one axes."""
    fig = Figure(figsize=figsize, dpi=150)
    return fig, fig.subplots()


def _band(ax, layers, mean, low, high, label, color):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.plot(layers, mean, marker="o", markersize=3, color=color, label=label)
    ax.fill_between(layers, low, high, color=color, alpha=0.2, linewidth=0)


def plot_safety_layers(result):
    """Two panels sharing the layer axis: (top) refusal mass per layer of toxic and benign prompts (mean ± std);
    (bottom) their contrast, toxic minus benign, with its bootstrap interval, the safety range shaded and the
    paper's literal range as dashed lines. The verdict is the title."""
    import textwrap

    fig = Figure(figsize=(7, 6), dpi=150)
    top, bottom = fig.subplots(2, 1, sharex=True)
    layers = result.layers
    for name, mean, std, color in (("toxic", result.refusal_mass_mean, result.refusal_mass_std, "tab:red"),
                                   ("benign", result.benign_mass_mean, result.benign_mass_std, "tab:blue")):
        _band(top, layers, mean, [max(0.0, m - s) for m, s in zip(mean, std)],
              [min(1.0, m + s) for m, s in zip(mean, std)], f"{name} prompts (mean ± std)", color)
    top.set_ylabel("refusal mass (R)")
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="best")

    contrast = result.contrast
    confidence = contrast.get("confidence", 0.95)
    _band(bottom, layers, contrast["mean"], contrast["ci_low"], contrast["ci_high"],
          f"toxic - benign ({confidence:.0%} cluster-bootstrap interval)", "tab:purple")
    bottom.axhline(0.0, color="gray", linewidth=1)
    if result.safety_range is not None:
        start, end = result.safety_range
        bottom.axvspan(start - 0.5, end + 0.5, color="tab:green", alpha=0.15, label=f"safety layers {start}-{end}")
    if result.paper_range is not None:
        start, end = result.paper_range
        for k, label in ((start, f"paper's rule {start}-{end}"), (end, None)):
            bottom.axvline(k, color="black", linestyle="--", linewidth=1, label=label)
    bottom.set_xlabel("layer (HF hidden_states index)")
    bottom.set_ylabel("refusal mass difference")
    bottom.legend(fontsize=8, loc="best")
    condition = result.settings.get("condition", "text")
    counts = f"{contrast['n_x']} toxic, {contrast['n_y']} benign {condition} prompts"
    fig.suptitle("\n".join(textwrap.wrap(f"{result.verdict} [{counts}]", 90)), fontsize=9)
    fig.tight_layout()
    return fig


def plot_attention_share(result):
    """Head-averaged attention share of the last token on the toxic tokens per layer: mean, 10-90% band, and the
    uniform-attention level."""
    fig, ax = _axes()
    _band(ax, result.blocks, result.share_mean, result.share_q10, result.share_q90,
          "share on toxic tokens (mean, 10-90%)", "tab:purple")
    ax.axhline(result.uniform_share_mean, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    ax.set_xlabel("decoder block (produces hidden_states[k])")
    ax.set_ylabel("attention share")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Attention of the last prompt token to the toxic words ({len(result.samples)} samples)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_modality_similarity(result):
    """Per-layer cosine of pooled image and text states (mean ± std) with the CLIP cosine as a reference line."""
    fig, ax = _axes()
    mean, std = result.cosine_mean, result.cosine_std
    _band(ax, result.layers, mean, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
          "image vs text hidden states (mean ± std)", "tab:green")
    if result.clip_cosine_mean is not None:
        ax.axhline(result.clip_cosine_mean, color="black", linestyle="--", linewidth=1, label="CLIP image-text cosine")
    ax.set_xlabel("layer (HF hidden_states index)")
    ax.set_ylabel("cosine similarity")
    ax.set_title(f"Cross-modal similarity of {len(result.samples)} image-text pairs", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _window_labels(windows):
    return [f"{a}-{b}" if a != b else f"{a}" for a, b in windows]


def _dsr_series(ax, positions, rates, label, color, marker):
    values = [r["rate"] if r["rate"] is not None else float("nan") for r in rates]
    low = [v - r["low"] if r["rate"] is not None else 0.0 for v, r in zip(values, rates)]
    high = [r["high"] - v if r["rate"] is not None else 0.0 for v, r in zip(values, rates)]
    ax.errorbar(positions, values, yerr=[low, high], color=color, marker=marker, capsize=3, label=label)


def _dsr_axes(ax, windows, baseline, title):
    ax.axhline(baseline["rate"] if baseline["rate"] is not None else float("nan"), color="gray", linestyle="--",
               linewidth=1, label="no intervention")
    ax.axhspan(baseline["low"], baseline["high"], color="gray", alpha=0.1, linewidth=0)
    ax.set_xticks(range(len(windows)), _window_labels(windows))
    ax.set_xlabel("layers of the window")
    ax.set_ylabel("DSR (95% Wilson interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)


def plot_knockout_sweep(result):
    """DSR per window of knocked-out (and skipped) layers, against the no-intervention DSR."""
    fig, ax = _axes()
    positions = list(range(len(result.windows)))
    if result.knockout:
        _dsr_series(ax, [p - 0.06 for p in positions], result.knockout, "attention to toxic tokens knocked out",
                    "tab:red", "o")
    if result.skip:
        _dsr_series(ax, [p + 0.06 for p in positions], result.skip, "whole layers skipped", "tab:blue", "s")
    _dsr_axes(ax, result.windows, result.baseline,
              f"Information-flow knockout on toxic text ({result.baseline['total']} samples)")
    fig.tight_layout()
    return fig


def plot_steering_sweep(result):
    """DSR on toxic images per window of steered layers, against the unsteered DSR."""
    fig, ax = _axes()
    _dsr_series(ax, list(range(len(result.windows))), result.steered, "text states added to image tokens",
                "tab:green", "o")
    _dsr_axes(ax, result.windows, result.baseline,
              f"Hidden-state steering on toxic images ({result.baseline['total']} samples, scale {result.scale:g})")
    fig.tight_layout()
    return fig
