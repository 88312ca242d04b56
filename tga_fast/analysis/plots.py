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
    """Top: head-averaged attention share of the last token on the toxic tokens per block (mean, 10-90% band),
    on as many other words of the same prompts (the control, mean ± std) and the uniform-attention level. Bottom:
    toxic minus control with its cluster-bootstrap interval; the blocks above control (Holm) are starred."""
    fig, (top, bottom) = _two_panels()
    blocks = result.blocks
    _band(top, blocks, result.share_mean, result.share_q10, result.share_q90,
          "share on toxic tokens (mean, 10-90%)", "tab:purple")
    if result.control_share_mean is not None:
        mean, std = result.control_share_mean, result.control_share_std
        _band(top, blocks, mean, [max(0.0, m - s) for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
              "share on as many other words (control, mean ± std)", "tab:gray")
    above = set(result.blocks_above_control)
    if above:
        top.plot([b for b in blocks if b in above], [m for b, m in zip(blocks, result.share_mean) if b in above],
                 linestyle="none", marker="*", markersize=9, color="tab:red", label="above control (Holm, 0.05)")
    top.axhline(result.uniform_share_mean, color="gray", linestyle="--", linewidth=1, label="uniform attention")
    top.set_ylabel("attention share")
    top.set_ylim(bottom=0)
    top.set_title(f"Attention of the last prompt token to the toxic words ({len(result.samples)} samples)", fontsize=9)
    top.legend(fontsize=7)
    _contrast_panel(bottom, blocks, result.contrast, above, "toxic minus control share")
    bottom.set_xlabel("decoder block (produces hidden_states[k])")
    _verdict_caption(fig, result.verdict)
    return fig


def plot_modality_similarity(result):
    """Top: per-layer cosine of pooled image and text states of the same meaning and of mismatched pairs (image of
    one sample, text of another; mean ± std), with the CLIP cosine of both as horizontal lines. Bottom: matched
    minus mismatched with its cluster-bootstrap interval. Layers where matched is not above mismatched (Holm) are
    shaded in both panels."""
    fig, (top, bottom) = _two_panels()
    layers = result.layers
    mean, std = result.cosine_mean, result.cosine_std
    _band(top, layers, mean, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
          "image vs its own text (mean ± std)", "tab:green")
    if result.mismatched_cosine_mean is not None:
        mean, std = result.mismatched_cosine_mean, result.mismatched_cosine_std
        _band(top, layers, mean, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
              "image vs another sample's text (mean ± std)", "tab:gray")
    if result.clip_cosine_mean is not None:
        top.axhline(result.clip_cosine_mean, color="black", linestyle="--", linewidth=1,
                    label="CLIP image-text cosine")
    if result.clip_mismatched_cosine_mean is not None:
        top.axhline(result.clip_mismatched_cosine_mean, color="black", linestyle=":", linewidth=1,
                    label="CLIP cosine, mismatched pairs")
    above = set(result.layers_above_mismatched)
    if result.contrast is not None:
        not_above = [layer for layer in layers if layer not in above]
        for ax in (top, bottom):
            for k, layer in enumerate(not_above):
                label = "matched not above mismatched (Holm, 0.05)" if k == 0 and ax is top else None
                ax.axvspan(layer - 0.5, layer + 0.5, color="tab:red", alpha=0.08, linewidth=0, label=label)
    top.set_ylabel("cosine similarity")
    top.set_title(f"Cross-modal similarity of {len(result.samples)} image-text pairs", fontsize=9)
    top.legend(fontsize=7)
    _contrast_panel(bottom, layers, result.contrast, above, "matched minus mismatched cosine")
    bottom.set_xlabel("layer (HF hidden_states index)")
    _verdict_caption(fig, result.verdict)
    return fig


def _two_panels():
    """A figure with a main panel over a shorter contrast panel, sharing the x axis."""
    fig = Figure(figsize=(7, 6), dpi=150)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    return fig, (top, bottom)


def _contrast_panel(ax, columns, contrast, above, label):
    """A per-layer contrast (a ``Contrast.to_json()`` dict, or None) with its interval, zero dashed, the columns in
    ``above`` starred."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.0, color="gray", linestyle="--", linewidth=1)
    ax.set_ylabel("difference")
    if contrast is None:
        ax.text(0.5, 0.5, "no control measured", transform=ax.transAxes, ha="center", va="center", fontsize=8)
        return
    confidence = f"{contrast.get('confidence', 0.95):.0%}"
    _band(ax, columns, contrast["mean"], contrast["ci_low"], contrast["ci_high"],
          f"{label} ({confidence} cluster-bootstrap interval)", "tab:blue")
    marked = [(c, m) for c, m in zip(columns, contrast["mean"]) if c in above]
    if marked:
        ax.plot(*zip(*marked), linestyle="none", marker="*", markersize=9, color="tab:red",
                label="above zero (Holm, 0.05)")
    ax.legend(fontsize=7)


def _verdict_caption(fig, verdict):
    """The result's verdict under the panels (wrapped), then a tight layout that leaves room for it."""
    import textwrap

    if verdict:
        fig.text(0.5, 0.01, textwrap.fill(verdict, 110), ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.05 if verdict else 0, 1, 1))


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
    """DSR per window of decoder blocks for the knockout of the toxic tokens, its control (as many other tokens)
    and whole blocks skipped, with their clustered intervals; the no-intervention DSR as a line with its band; the
    windows where the knockout lowers the DSR beyond the control shaded."""
    fig, ax = _axes()
    series = [("knockout", "attention to the toxic tokens knocked out", "tab:red", "o"),
              ("control", "as many other tokens knocked out (control)", "tab:orange", "^"),
              ("skip", "whole blocks skipped", "tab:blue", "s")]
    _sweep_series(ax, result, series)
    _dsr_axes(ax, result.windows, result.baseline,
              f"Information-flow knockout on toxic text ({result.baseline['total']} samples)")
    _sweep_marks(ax, result, "knockout below control and baseline")
    ax.set_xlabel("decoder blocks of the window")
    fig.tight_layout()
    return fig


def _sweep_series(ax, result, series):
    """One DSR series per ``(field, label, color, marker)`` of ``series`` that ran (a non-empty list of rates on
    ``result``), side by side within each window."""
    ran = [s for s in series if getattr(result, s[0])]
    for k, (name, label, color, marker) in enumerate(ran):
        offset = (k - (len(ran) - 1) / 2) * 0.1
        _dsr_series(ax, [p + offset for p in range(len(result.windows))], getattr(result, name), label, color,
                    marker)


def _sweep_marks(ax, result, label):
    """Shades ``result.significant_windows``, names the interval's method on the y axis, redraws the legend."""
    for k, bounds in enumerate(result.significant_windows):
        i = result.windows.index(list(bounds))
        ax.axvspan(i - 0.4, i + 0.4, color="gold", alpha=0.25, linewidth=0,
                   label=f"significant: {label} (McNemar, Holm)" if k == 0 else None)
    ax.set_ylabel(f"DSR (95% interval, clustered by {result.settings.get('cluster_by', 'concept')})")
    ax.legend(fontsize=7)


def plot_steering_sweep(result):
    """DSR on toxic images per window of steered layers (the text's own state, a random vector of its norm, a
    mismatched text's state) with their clustered intervals; the unsteered DSR as a line with its band; the windows
    where steering raises the DSR beyond the controls shaded."""
    fig, ax = _axes()
    series = [("steered", "text's own states added to image tokens", "tab:green", "o"),
              ("random", "random vector of the same norm", "tab:brown", "^"),
              ("mismatched", "another text's states", "tab:purple", "s")]
    _sweep_series(ax, result, series)
    _dsr_axes(ax, result.windows, result.baseline,
              f"Hidden-state steering on toxic images ({result.baseline['total']} samples, scale {result.scale:g})")
    _sweep_marks(ax, result, "steered above controls and baseline")
    ax.set_xlabel("HF layers of the window (0 = input embeddings)")
    fig.tight_layout()
    return fig
