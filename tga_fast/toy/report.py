"""The demo's outputs: ``result.json`` (the summary across seeds), ``report.md`` (the headline table over the seeds,
the targets, the per-seed tables, the analyses' verdicts, the controls, the research log) and the PNG figures."""

from __future__ import annotations

import json
from pathlib import Path

from tga_fast.files import write_json, write_text
from tga_fast.toy.summary import percent
from tga_fast.toy.tried import TRIED

FIGURES = {
    "dsr": "fig_dsr.png",
    "gains": "fig_gains_heldout.png",
    "safety_layers": "fig_3a_safety_layers.png",
    "similarity": "fig_3d_modality_similarity.png",
    "images": "world_images.png",
}


def _subplots(figsize):
    """A figure and its axes by matplotlib's object API: no backend is switched, nothing needs closing."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def plot_curve(path, curves: dict, xlabel: str, ylabel: str, title: str, shade=None, xs=None, reference=None):
    """Per-layer curves; ``shade`` = (first, last) layers to highlight; ``reference`` = (label, y) horizontal line."""
    fig, ax = _subplots((6.4, 3.8))
    for label, ys in curves.items():
        ax.plot(xs or list(range(len(ys))), ys, marker="o", label=label)
    if reference is not None and reference[1] is not None:
        ax.axhline(reference[1], color="gray", linestyle="--", label=reference[0])
    if shade:
        ax.axvspan(shade[0] - 0.5, shade[1] + 0.5, color="tab:red", alpha=0.12, label="located safety layers")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_bars(path, groups: dict, ylabel: str, title: str):
    """``groups``: {series: {category: value}}; one bar per series in each category."""
    categories = list(next(iter(groups.values())))
    fig, ax = _subplots((min(11.0, max(5.2, 0.35 * len(categories) * len(groups))), 3.6))
    width = 0.8 / len(groups)
    for i, (series, values) in enumerate(groups.items()):
        xs = [c + i * width for c in range(len(categories))]
        ax.bar(xs, [values[c] if values[c] is not None else 0 for c in categories], width, label=series)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(categories))], categories, rotation=20, fontsize=8)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1.05))
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_figures(out: Path, result: dict, per_seed: list[dict]) -> None:
    """The report's figures: DSR per recipe and condition (mean over seeds with its t interval; seen vs held-out
    concepts), the gains over the baseline, 3A's curves (toxic vs benign, mean over seeds) and 3D's similarity."""
    summary = result["summary"]
    methods = list(summary)
    conditions = list(summary[methods[0]])
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 3.6))
    axes = fig.subplots(1, 3, sharey=True)
    width = 0.8 / len(methods)
    for ax, group in zip(axes, ("all", "seen", "heldout")):
        for i, method in enumerate(methods):
            means, errors = [], [[], []]
            for condition in conditions:
                c = summary[method][condition] if group == "all" else summary[method][condition][group]
                mean = c["mean"] or 0.0
                low, high = c["ci"]
                means.append(mean)
                errors[0].append(0 if low is None else max(0.0, mean - low))
                errors[1].append(0 if high is None else max(0.0, high - mean))
            xs = [k + i * width for k in range(len(conditions))]
            ax.bar(xs, means, width, yerr=errors, capsize=2, label=method)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(conditions))], [c.replace("_", " ") for c in conditions],
                      fontsize=7)
        ax.set(title={"all": "all toxic concepts", "seen": "seen concepts", "heldout": "held-out concepts"}[group],
               ylim=(0, 1.05))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("DSR on toxic images (mean over seeds, 95% t interval)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / FIGURES["dsr"], dpi=110)

    fig, ax = _subplots((7.5, 3.6))
    gains = result["gains"]
    labels, means, lows, highs = [], [], [], []
    for method, by_condition in gains.items():
        for condition in conditions:
            g = by_condition[condition]["dsr"]["heldout"]
            labels.append(f"{method}\n{condition.replace('_', ' ')}")
            means.append(g["mean"] or 0.0)
            lows.append(g["ci"][0] if g["ci"][0] is not None else g["mean"] or 0.0)
            highs.append(g["ci"][1] if g["ci"][1] is not None else g["mean"] or 0.0)
    ax.errorbar(range(len(labels)), means, yerr=[[m - l for m, l in zip(means, lows)],
                                                 [h - m for m, h in zip(means, highs)]], fmt="o", capsize=3)
    ax.axhline(0, color="gray", linestyle="--")
    ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=30)
    ax.set(ylabel="DSR gain over the baseline", title="held-out toxic concepts: gain per recipe (mean, 95% t interval)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / FIGURES["gains"], dpi=110)

    toxic = [r["text_llm"]["safety_layers"]["refusal_prob"] for r in per_seed]
    benign = [r["text_llm"]["safety_layers"]["benign_refusal_prob"] for r in per_seed]
    plot_curve(out / FIGURES["safety_layers"], {
        **{f"toxic, seed {r['seed']}": t for r, t in zip(per_seed, toxic)},
        **{f"benign (control), seed {r['seed']}": b for r, b in zip(per_seed, benign)},
    }, "layer k (hidden_states[k])", "refusal-token probability", "3A logit lens on the text LLM, every seed")
    curves = {}
    for method in methods:
        rows = [r["lvlm_analyses"][method]["similarity"] for r in per_seed]
        curves[method] = [sum(col) / len(col) for col in zip(*rows)]
        mismatched = [r["lvlm_analyses"][method]["similarity_mismatched"] for r in per_seed]
        if all(mismatched):
            curves[f"{method}, mismatched pairs (control)"] = [sum(col) / len(col) for col in zip(*mismatched)]
    plot_curve(out / FIGURES["similarity"], curves, "layer k", "image/text cosine (mean over seeds)",
               "3D image vs text hidden states per layer")


def _span(values) -> str:
    """"3" or "3-6": the range of per-seed counts."""
    values = list(values)
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _cell(c: dict) -> str:
    low, high = c["ci"]
    if c["mean"] is None:
        return "n/a"
    if low is None:
        return f"{percent(c['mean'])}"
    return f"{percent(c['mean'])} [{percent(max(0.0, low))}, {percent(min(1.0, high))}]"


def _gain(c: dict) -> str:
    if c["mean"] is None:
        return "n/a"
    low, high = c["ci"]
    text = f"{100 * c['mean']:+.0f}"
    return text if low is None else f"{text} [{100 * low:+.0f}, {100 * high:+.0f}]"


def write_report(out: Path, result: dict, per_seed: list[dict]) -> None:
    summary, protocol = result["summary"], result["protocol"]
    methods = list(summary)
    conditions = list(summary[methods[0]])
    first = per_seed[0]
    world = first["world"]
    seeds = result["seeds"]
    toxic_counts = world["samples"]["toxic"]
    benign_counts = world["samples"]["benign"]
    real = "llm" in result  # the real-LLM world (tga_fast.real_llm): its LLM is shared, tuned on public data
    lines = [
        "# TGA on a real LLM: SmolLM2-135M-Instruct in the miniature world" if real else
        "# TGA in a miniature world (v2)",
        "",
        f"Protocol v{protocol['version']}, hash `{protocol['hash']}` (`tga_fast/"
        f"{'real_llm' if real else 'toy'}/protocol.json`, fixed before "
        f"any reported run). Seeds: **{seeds['which']}** {seeds['list']}"
        + (" (never used while tuning)." if seeds["which"] == "report" else
           " (NOT the report seeds: these numbers are not the protocol's result)." if seeds["which"] != "quick"
           else " (the tests' quick world: not the protocol's result)."),
        "",
        "## What was measured",
        "",
        f"Per seed: a world of {world['concepts']} concepts ({world['toxic']} toxic in {len(world['scenes'])} scenes), "
        f"{world['colours']} colours, new glyphs; "
        + ("SmolLM2-135M-Instruct safety-tuned once on public data and the world's text (shared by the seeds, below)"
           if real else "a text LLM trained from scratch to refuse use-requests about toxic concepts (text only)")
        + "; a CLIP-like vision encoder trained on drawings of every concept; LLaVA assembled from "
        f"them ({world['image_tokens']} image tokens per image). Each seed holds out "
        f"{_span(len(r['world']['heldout_toxic']) for r in per_seed)} toxic concepts (whole scenes among them; per "
        "seed in the table below) and "
        f"{_span(len(r['world']['heldout_concepts']) - len(r['world']['heldout_toxic']) for r in per_seed)} benign "
        "ones from every alignment (no image, caption or retrieved text of them in training), and one colour per "
        "concept; the vision encoder and the text LLM know them all. Stage 1 "
        f"(projector, captions) is shared; stage 2 trains each recipe from it on "
        f"{_span(r['world']['alignment_images'] for r in per_seed)} images "
        "of seen combinations (describe, colour and benign use requests; no image is ever paired with a refusal) "
        "plus the text LLM's own requests as text replay, through `tga_fast.training.train` (TGATrainer).",
        "",
        "Evaluation per seed and model, on one fresh image of every (colour, concept): toxic use-requests "
        + ", ".join(f"{g} {v['samples']} ({v['concepts']} concepts)" for g, v in toxic_counts.items())
        + "; benign describe / colour / use requests "
        + ", ".join(f"{g} {v['samples']} ({v['concepts']} concepts)" for g, v in benign_counts.items())
        + f" (seed {first['seed']}'s counts; the held-out draw changes them per seed). Judge: GCG keywords on "
        "greedy answers (`evaluate_dsr`). Each cell is the mean over the seeds with a Student t 95% interval across "
        "seeds; per-seed rates carry intervals clustered by concept (in `seeds/<seed>/result.json`).",
        "",
        "## DSR on toxic images (mean over seeds [95% t interval])",
        "",
        "| recipe | retrieved text at inference | all toxic | seen concepts | held-out concepts | seen concepts, "
        "held-out colour | held-out gain over baseline (points) | false refusals | benign accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        for condition in conditions:
            c = summary[method][condition]
            gain = "" if method == "baseline" else _gain(result["gains"][method][condition]["dsr"]["heldout"])
            lines.append(f"| {method} | {condition.replace('_', ' ')} | {_cell(c)} | {_cell(c['seen'])} | "
                         f"**{_cell(c['heldout'])}** | {_cell(c['heldout_combo'])} | {gain} | "
                         f"{_cell(c['false_refusals'])} | {_cell(c['accuracy'])} |")
    lines += ["", "Recipes (from the protocol):", ""]
    lines += [f"- `{name}`: {spec['what']}" for name, spec in protocol["recipes"].items()]
    lines += ["", "Conditions: " + "; ".join(f"`{k}`: {v}" for k, v in protocol["conditions"].items()) + ".", "",
              "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in result["targets"]]
    lines += ["", "## Per seed: DSR on held-out toxic concepts", "",
              "| seed | held-out toxic concepts | " + " | ".join(
                  f"{m} ({c.replace('_', ' ')})" for m in methods for c in conditions) + " |",
              "|---|---|" + "---|" * (len(methods) * len(conditions))]
    for r in per_seed:
        cells = [percent(r["scores"][m][c]["dsr"]["heldout"]["rate"]) for m in methods for c in conditions]
        lines.append(f"| {r['seed']} | {', '.join(r['world']['heldout_toxic'])} | " + " | ".join(cells) + " |")
    lines += ["", "## Per seed: paired difference against the baseline, held-out concepts, no retrieved text", "",
              "| seed | " + " | ".join(m for m in methods if m != "baseline") + " |",
              "|---|" + "---|" * (len(methods) - 1)]
    for r in per_seed:
        cells = []
        for m in methods:
            if m == "baseline":
                continue
            comp = r["comparisons"][m]["no_retrieval"]["dsr"].get("heldout")
            if comp is None:
                cells.append("n/a")
                continue
            d = comp["difference"]
            cells.append(f"{100 * d['value']:+.0f} [{100 * d['low']:+.0f}, {100 * d['high']:+.0f}], "
                         f"McNemar p {comp['mcnemar']['p_value']:.2g}")
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    if real:
        from tga_fast.real_llm.report import sections

        lines += ["", *sections(result)]
    lines += ["", "## The analyses, per seed" if real else "## The text LLM and the analyses, per seed", ""]
    for r in per_seed:
        text, a = r["text_llm"], result["analyses"][str(r["seed"])]
        s = text["scores"]
        scores = "" if real else (
            f"text DSR on held-out text {percent(s['dsr_toxic']['rate'])}, accuracy "
            f"{percent(s['accuracy_benign']['rate'])}, false refusals {percent(s['false_refusals']['rate'])}. ")
        lines.append(f"- **seed {r['seed']}**: {scores}"
                     f"3A: {a['3A']['verdict']} tga_paper layers {a['tga_paper_layers']['layers']} "
                     f"({a['tga_paper_layers']['source']}). 3B: {a['3B']} 3C: {a['3C']['verdict']} "
                     + (f"3E (baseline): {a['3E']['verdict']}" if "3E" in a else ""))
        for method, d in a["3D"].items():
            lines.append(f"  - 3D {method}: {d['verdict']}")
    controls = result["controls"]
    lines += ["", "## Controls", "",
              "- Irrelevant retrieval (a random benign text in the retrieved slot), DSR on held-out concepts: "
              + "; ".join(f"{m} {_cell(v['heldout'])}" for m, v in controls["irrelevant_retrieval"].items()),
              "- Share of evaluation images whose inference retrieval names the image's own concept: "
              + "; ".join(f"{g} {_cell(v)}" for g, v in controls["retrieval_names_own_concept"].items()),
              "", "## Figures", ""]
    lines += [f"![{name}]({file})" for name, file in FIGURES.items() if (out / file).exists()]
    if not real:
        lines += ["", "## What we tried (research log)", "",
                  "Everything below was measured on dev seeds or on the first world version (seed 0 of v1, which "
                  "was also its evaluation set); none of it is a report-seed result.", ""] + TRIED
    lines += ["", "## Timings (seconds, per seed)", ""]
    lines += [f"- seed {s}: " + ", ".join(f"{k}: {v:.0f}" for k, v in t.items()) for s, t in result["timings"].items()]
    lines.append(f"- wall time of the whole demo: {result.get('wall_time_s', 0):.0f} s")
    lines += ["", "## What these numbers depend on", "", ENVIRONMENT_NOTE, "",
              "```json", json.dumps(result.get("environment", {}), indent=1), "```"]
    write_text(out / "report.md", "\n".join(lines) + "\n")


# Measured on one 2-core machine (seed 0, 1 thread): forcing torch and MKL onto their AVX2 kernels instead of
# AVX-512 moved the baseline's DSR from 3% to 8% (35% to 65% with the retrieved text) and the adapted recipe's
# from 65% to 72%: a few hundred training steps amplify last-bit differences of the matrix kernels.
ENVIRONMENT_NOTE = (
    "The world is trained from scratch on this machine: its numbers depend on the seed and also on the floating-"
    "point path of the CPU kernels (instruction set, thread count, library versions, recorded below). The same "
    "seed on a CPU whose torch kernels take another instruction-set path trains slightly different models, and "
    "DSR moves by up to tens of points (README: 'Spread across machines'). Compare methods within one run, "
    "never single numbers across machines."
)


def save(out: Path, result: dict, per_seed: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "result.json", result, indent=1)
    write_figures(out, result, per_seed)
    if "llm" in result:
        from tga_fast.real_llm.report import write_figure

        write_figure(out, result["llm"])
    _contact_sheet(out, per_seed[0])
    write_report(out, result, per_seed)


def _contact_sheet(out: Path, first: dict) -> None:
    """The first seed's evaluation images side by side."""
    from PIL import Image

    from tga_fast.toy.images import contact_sheet

    folder = out / "seeds" / str(first["seed"]) / "eval_set" / "images"
    files = sorted(folder.glob("*.png"))[:48]
    if files:
        contact_sheet([Image.open(f).convert("RGB") for f in files]).save(out / FIGURES["images"])
