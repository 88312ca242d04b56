"""One TGA training step (teacher + student + backward) against the released approach and a plain LM step.

Providers on the same random CPU-sized LLaVA (CLIP 2 x 128 on 128 px = 256 image tokens; Llama 12 layers, D 256,
4 heads; target layers 4..7, the paper's 10..18 of 32 scaled) and the same batch (B 2, retrieved text, image, question, answer; a 64-token
caption prompt for the teacher), at two lengths:

``plain``        the LM loss alone: forward with labels, backward (what the others are compared with)
``tga``          ``TGATrainer.compute_loss``: teacher pass (no grad, eval, ``capture(..., stop_after=7)``), student
                 pass with ``capture(..., targets=...)`` (fused ``segment_cosine``), ``tga_alignment_loss``, backward
``released``     the released code's passes (METHOD.md 5.3): teacher and student forwards with
                 ``output_attentions=True`` and ``output_hidden_states=True`` (eager attention), then the Python
                 loop over layers x samples (slices, ``.mean``, ``F.cosine_similarity``, ``torch.exp`` so that it
                 has a gradient), backward
``released_hs``  the same with the student pass on SDPA and ``output_hidden_states=True`` only (attention maps in
                 the teacher pass alone)
``lora``         ``tga``'s step on a copy of the model with LoRA adapters (r 16, alpha 32, dropout 0.05, the default
                 targets: the LLM's attention and MLP projections) and the projector trainable, the LLM frozen
``lora_nodrop``  the same with ``lora_dropout`` 0 (peft then feeds the layer's input to the adapter as is, instead
                 of a dropped-out copy that the backward keeps)
``tga_adamw``,   a whole optimizer step of full fine-tuning (``tga``) and of LoRA (``lora``): the step above plus
``lora_adamw``   an AdamW update whose state is created in the step, so that its memory counts in the step's peak

Correctness first: ``tga``'s alignment terms equal the released loop's on the same weights. ``peak_mb`` is the
peak RSS growth of one step in a fresh process. Targets (issue 6): ``tga`` at most +10% time and +5% peak memory
over ``plain``; ``released`` at least 1.5x slower and 2x the peak memory of ``tga`` at the longer length.
Issue 14: stage 2 with LoRA (r 16) against full fine-tuning, peak memory and step time side by side.

    python -m pytest benchmarks/bench_train_step.py -o python_files='bench_*.py' --benchmark-only
    python -m benchmarks.bench_train_step --interleaved --rounds 5      # providers in turn: for a shared machine
    python -m benchmarks.bench_train_step --interleaved --providers tga lora lora_nodrop tga_adamw lora_adamw
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from benchmarks.measure import ROOT, peak_memory_here

PROVIDERS = ("plain", "tga", "released", "released_hs", "lora", "lora_nodrop", "tga_adamw", "lora_adamw")
LORA_RANK = 16
LENGTHS = (512, 2048)  # 2048: the stage-1 max length (configs/stage1_pretrain.json)
LAYERS = tuple(range(4, 8))  # METHOD's 10..18 of 32 layers scaled to 12 (tga_fast.training.config.default_target_layers)
BATCH, IMAGE_TOKENS, RETRIEVED_TOKENS, QUESTION_TOKENS, CAPTION_TOKENS = 2, 256, 40, 24, 48
ROUNDS = int(os.environ.get("TGA_FAST_BENCH_ROUNDS", "3"))
PREFIX = 8  # bos + "USER: Retrieved Text: " of a chat template
VOCAB, IMAGE_TOKEN = 1000, 999


def build():
    """A random LLaVA (eval, fp32) with the vision tower frozen and the projector + LLM trainable (stage 2)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=128, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=12, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2048, pad_token_id=0,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).float()
    model.set_attn_implementation("sdpa")
    model.requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)
    return model


def batch(seq_len: int):
    """The student and teacher batches and their spans; token layout per sample (B = 2, right padding on the
    second sample): prefix, retrieved text, ". ", image tokens, question, answer (the labels)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB - 1, (BATCH, seq_len), generator=gen)
    mask = torch.ones(BATCH, seq_len, dtype=torch.int64)
    retrieved = (PREFIX, PREFIX + RETRIEVED_TOKENS)
    image = (retrieved[1] + 2, retrieved[1] + 2 + IMAGE_TOKENS)
    answer_start = image[1] + QUESTION_TOKENS
    ids[:, image[0] : image[1]] = IMAGE_TOKEN
    labels = torch.full_like(ids, -100)
    labels[:, answer_start:] = ids[:, answer_start:]
    pad = 32  # the second sample is shorter
    ids[1, -pad:], mask[1, -pad:], labels[1, -pad:] = 0, 0, -100
    student_spans = torch.tensor([[image, retrieved]] * BATCH, dtype=torch.int64)
    teacher_len = PREFIX + CAPTION_TOKENS + 8
    teacher_ids = torch.randint(1, VOCAB - 1, (BATCH, teacher_len), generator=gen)
    teacher_spans = torch.tensor([[(PREFIX, PREFIX + CAPTION_TOKENS)]] * BATCH, dtype=torch.int64)
    pixels = torch.randn(BATCH, 3, 128, 128, generator=gen)
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels)
    extras = dict(
        teacher_input_ids=teacher_ids, teacher_attention_mask=torch.ones_like(teacher_ids), student_spans=student_spans,
        teacher_spans=teacher_spans, align=torch.ones(BATCH, dtype=torch.bool), has_retrieved=torch.ones(BATCH, dtype=torch.bool),
    )  # fmt: skip
    return inputs, extras


def trainer_for(model, tmp_dir: str):
    from tga_fast.training.config import TGAConfig, TrainConfig
    from tga_fast.training.trainer import TGATrainer

    args = TrainConfig(output_dir=tmp_dir, use_cpu=True, report_to="none", disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        return TGATrainer(model=model, args=args, tga=TGAConfig(target_layers=list(LAYERS)), target_layers=LAYERS)


def released_terms(model, inputs, extras, student_attention: bool):
    """``(ce, pair + hinge)`` the released way: all hidden states (and attention maps) kept, Python loops."""
    model.eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        teacher = model(
            input_ids=extras["teacher_input_ids"], attention_mask=extras["teacher_attention_mask"], use_cache=False,
            output_attentions=True, output_hidden_states=True,
        )  # fmt: skip
    caption = extras["teacher_spans"].tolist()  # host indices, as the released code
    targets = [
        [teacher.hidden_states[k][b, caption[b][0][0] : caption[b][0][1]].mean(0) for b in range(BATCH)] for k in LAYERS
    ]
    del teacher
    model.train()
    if not student_attention:
        model.set_attn_implementation("sdpa")
    out = model(**inputs, use_cache=False, output_hidden_states=True, output_attentions=student_attention)
    spans = extras["student_spans"].tolist()
    pair, hinge = 0.0, 0.0
    for i, k in enumerate(LAYERS):
        states = out.hidden_states[k]
        for b in range(BATCH):
            (image_start, image_end), (text_start, text_end) = spans[b]
            cos_image = F.cosine_similarity(states[b, image_start:image_end].mean(0), targets[i][b], dim=0)
            cos_text = F.cosine_similarity(states[b, text_start:text_end].mean(0), targets[i][b], dim=0)
            pair = pair + torch.exp(-cos_image)
            hinge = hinge + torch.exp(cos_text - cos_image)
    scale = 1.0 / (len(LAYERS) * BATCH)
    model.set_attn_implementation("sdpa")
    return out.loss, 0.25 * scale * pair + 0.1 * scale * hinge  # progress t = 0


_STATE: dict = {}


def lora_model(dropout: float = 0.05):
    """``build()``'s model, built again, with LoRA adapters (r 16, ``dropout``) and the projector trainable, the
    LLM frozen: a model of its own, since peft changes the model it wraps."""
    key = f"lora_model_{dropout}"
    if key not in _STATE:
        from tga_fast.training.config import ModelConfig
        from tga_fast.training.lora import apply_lora
        from tga_fast.training.stages import freeze_for_stage

        model = build()
        freeze_for_stage(model, train_llm=False)
        _STATE[key] = apply_lora(model, ModelConfig(train_llm=True, lora_r=LORA_RANK, lora_dropout=dropout))
    return _STATE[key]


def workload(provider: str, seq_len: int, tmp_dir: str = "/tmp"):
    """``run()``: one training step (forward, backward; gradients zeroed first) of ``provider``."""
    if provider.startswith("lora"):
        model = lora_model(0.0 if provider == "lora_nodrop" else 0.05)
    else:
        if "model" not in _STATE:
            _STATE["model"] = build()
        model = _STATE["model"]
    inputs, extras = batch(seq_len)
    tga_step = provider in ("tga", "lora", "lora_nodrop", "tga_adamw", "lora_adamw")
    trainer = trainer_for(model, tmp_dir) if tga_step else None
    trainable = [p for p in model.parameters() if p.requires_grad]

    def run():
        model.zero_grad(set_to_none=True)
        model.train()
        if provider == "plain":
            loss = model(**inputs, use_cache=False).loss
        elif tga_step:
            loss = trainer.compute_loss(model, {**inputs, **extras})
        else:
            ce, terms = released_terms(model, inputs, extras, student_attention=provider == "released")
            loss = ce + terms
        loss.backward()
        if provider.endswith("_adamw"):
            # a fresh optimizer: its state (2 fp32 tensors per trainable weight) is allocated in this step
            torch.optim.AdamW(trainable, lr=1e-6).step()
        return loss.detach()

    return run


def check_tga_against_released(seq_len: int, tmp_dir: str) -> None:
    """tga's alignment terms equal the released loop's on the same weights and batch (no training step)."""
    model = _STATE.setdefault("model", build())
    inputs, extras = batch(seq_len)
    trainer = trainer_for(model, tmp_dir)
    with torch.no_grad():
        tga_loss = trainer.compute_loss(model.train(), {**inputs, **extras})
        ce, terms = released_terms(model, inputs, extras, student_attention=False)
    torch.testing.assert_close(tga_loss, ce + terms, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seq_len", LENGTHS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(benchmark, provider, seq_len, tmp_path):
    if provider == "tga":
        check_tga_against_released(seq_len, str(tmp_path))
    run = workload(provider, seq_len, str(tmp_path))
    benchmark.group = f"train_step llava-12x256 B={BATCH} T={seq_len}"
    benchmark.extra_info.update(provider=provider)
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    benchmark.extra_info["peak_mb"] = peak_memory(provider, seq_len)


def peak_memory(provider: str, seq_len: int) -> float | None:
    if os.environ.get("TGA_FAST_BENCH_MEMORY", "1") == "0":
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, "-m", "benchmarks.bench_train_step", "--provider", provider, "--seq-len", str(seq_len)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20


def interleaved(lengths, rounds: int, providers=PROVIDERS) -> str:
    """Medians with the providers timed in turn within each round (one warm-up round first), so that the load of a
    shared machine drifting during the run falls on all of them alike; a markdown table with fresh-process peaks."""
    import statistics
    import time

    lines = [f"| T | provider | median ms | time vs {providers[0]} | peak MB | memory vs {providers[0]} |", "|---|---|---|---|---|---|"]
    for seq_len in lengths:
        runs = {provider: workload(provider, seq_len) for provider in providers}
        check_tga_against_released(seq_len, "/tmp")
        times = {provider: [] for provider in providers}
        for round_ in range(rounds + 1):
            for provider, run in runs.items():
                start = time.perf_counter()
                run()
                if round_:
                    times[provider].append(time.perf_counter() - start)
        medians = {p: statistics.median(t) for p, t in times.items()}
        peaks = {p: peak_memory(p, seq_len) for p in providers}
        first = providers[0]  # the ratios' reference
        for p in providers:
            memory = "-" if peaks[p] is None else f"{peaks[p]:.0f} | {peaks[p] / peaks[first]:.2f}x"
            lines.append(f"| {seq_len} | {p} | {medians[p] * 1e3:.0f} | {medians[p] / medians[first]:.2f}x | {memory} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="peak memory of one provider's step in a fresh process, or --interleaved")
    parser.add_argument("--provider", choices=PROVIDERS)
    parser.add_argument("--seq-len", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--interleaved", action="store_true", help="time all providers in turn per round (noisy machines)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS),
                        help="--interleaved: these providers (the first is the ratios' reference)")
    cli = parser.parse_args()
    if cli.interleaved:
        print(interleaved(cli.seq_len, cli.rounds, tuple(cli.providers)))
    else:
        if cli.provider is None or len(cli.seq_len) != 1:
            parser.error("--provider and one --seq-len are required without --interleaved")
        step = workload(cli.provider, cli.seq_len[0])
        print(json.dumps({"peak_bytes": peak_memory_here(step, "cpu")}))
