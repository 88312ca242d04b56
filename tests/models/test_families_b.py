"""The tiled families, LLaVA-OneVision, Mistral 3 and Idefics3, through resolve, spans, capture, knockout, steer,
generation, a TGATrainer step and load_model, on their tiny offline models (their entries of
``tga_fast.models.tiny_families.TINY_FAMILIES``).

One cheap smoke per family runs in the fast loop; the matrix is ``slow``. Each family's tiny model is built once
per module (``family`` fixture) and shared; tests that change weights or modes build their own copy (about 0.1 s).
"""

from __future__ import annotations

import importlib.util
import json
import types
import warnings

import pytest
import torch

from tests.helpers import assert_within_budget
from tga_fast.models import capture, knockout, resolve, steer
from tga_fast.models.hooks import hidden_from_pre_hook
from tga_fast.models.prompts import Prompt, encode_prompts
from tga_fast.models.tiny import random_images
from tga_fast.models.tiny_families import TINY_FAMILIES, tiny_family
from tga_fast.ops.kernels.segment_pool import reference as pool_reference

# (family, how its image's tokens lie, the module attributes that hold its parts under model.model); the families
# of this matrix (test_families.py runs the others of the registry).
EXPECTED = {
    "llava_onevision": ("one", "language_model", "vision_tower", "multi_modal_projector"),
    "mistral3": ("hull", "language_model", "vision_tower", "multi_modal_projector"),
    "idefics3": ("hull", "text_model", "vision_model", "connector"),
}
# Two image shapes per batch: OneVision gets another tile grid, Mistral 3 other rows, Idefics3 other tiles.
SIZES = ((40, 70), (70, 40))
SAMPLES = (("what is in this image?", "a red knife"), ("describe the picture.", "a small dog on a wooden table"))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def family(request):
    """``(name, model, processor)``: one tiny model per family for the whole module (eval mode, fp32, sdpa)."""
    model, processor = tiny_family(request.param)
    return request.param, model, processor


def test_part_b_families_are_registered():
    """The three families sit in the one registry, so ``tga-fast env`` and every matrix loop see them."""
    assert set(EXPECTED) <= set(TINY_FAMILIES)


def encode(model, processor, padding_side="right", count=2):
    """The first ``count`` samples as image prompts with a retrieved text, through the shared prompt builder with
    the adapter's image token and image-runs rule."""
    processor.tokenizer.padding_side = padding_side
    prompts = [Prompt(question=q, image=True, retrieved=r) for q, r in SAMPLES[:count]]
    images = [random_images(1, size=size, seed=i)[0] for i, size in enumerate(SIZES[:count])]
    parts = resolve(model)
    return encode_prompts(processor, prompts, images, image_token_id=parts.image_token_id,
                          image_runs=parts.architecture.image_runs)


def runs_of(is_image: torch.Tensor) -> int:
    """Number of runs of True in a bool ``[T]``."""
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:-1]
    return int(starts.sum())


def test_smoke_resolve_and_spans(family):
    """Fast loop: parts, image token and backbones of the adapter; spans from the processor's own expansion."""
    name, model, processor = family
    runs, text_model, tower, projector = EXPECTED[name]
    parts = resolve(model)
    assert parts.model_type == name and parts.architecture.image_runs == runs
    inner = model.model
    assert parts.decoder_layers is getattr(inner, text_model).layers
    assert parts.final_norm is getattr(inner, text_model).norm
    assert parts.input_embeddings is model.get_input_embeddings()
    assert parts.lm_head is model.lm_head
    assert parts.vision_tower is getattr(inner, tower) and parts.projector is getattr(inner, projector)
    assert parts.image_token_id == processor.image_token_id
    # A text backbone the family entry does not list is refused, naming the supported ones.
    gemma_text = types.SimpleNamespace(model_type="gemma")
    other = types.SimpleNamespace(config=types.SimpleNamespace(model_type=name, text_config=gemma_text))
    with pytest.raises(ValueError, match="text backbone 'gemma' is not supported"):
        resolve(other)

    encoded = encode(model, processor)
    ids, spans = encoded.batch["input_ids"], encoded.spans
    is_image = ids == parts.image_token_id
    for b in range(ids.shape[0]):
        start, end = spans["image"][b].tolist()
        inside = torch.zeros_like(is_image[b])
        inside[start:end] = True
        # The span is the hull: it starts and ends on image tokens and holds every image token of the sample.
        assert is_image[b, start] and is_image[b, end - 1] and not (is_image[b] & ~inside).any()
        assert runs_of(is_image[b]) == 1 or runs == "hull"
        for piece, text in (("retrieved", SAMPLES[b][1]), ("question", SAMPLES[b][0])):
            s, e = spans[piece][b].tolist()
            assert processor.tokenizer.decode(ids[b, s:e]).strip() == text
    if runs == "hull":  # the tiny shapes do give several runs per image
        assert max(runs_of(row) for row in is_image) > 1
    with torch.no_grad():
        assert model(**encoded.batch).logits.isfinite().all()


def test_image_runs_rule():
    """``"one"`` refuses a split run, naming the sample; ``"hull"`` pools from the first to one past the last."""
    from tga_fast.models.spans import image_token_spans

    ids = torch.tensor([[5, 9, 9, 7, 9, 9, 8, 1], [5, 9, 9, 9, 1, 1, 1, 1], [5, 1, 1, 1, 1, 1, 1, 1]])
    assert image_token_spans(ids, 9, image_runs="hull")[:, 0].tolist() == [[1, 6], [1, 4], [0, 0]]
    with pytest.raises(ValueError, match="sample 0 has its 4 image tokens in more than one run"):
        image_token_spans(ids, 9, image_runs="one")
    with pytest.raises(ValueError, match="image_runs must be one of"):
        image_token_spans(ids, 9, image_runs="tiles")


def test_two_images_in_one_sample_are_refused(family):
    """The hull of one sample is one image's tokens only: a sample with two images is an error, for every family."""
    from tga_fast.models.spans import encode_with_spans

    name, model, processor = family
    placeholder = processor.image_token
    text = f"USER: {placeholder}\nand {placeholder}\nwhat differs? ASSISTANT:"
    with pytest.raises(ValueError, match="sample 0 has 2 images .one image per sample"):
        encode_with_spans(processor, [text], [{}], images=[random_images(2)],
                          image_token_id=resolve(model).image_token_id)


def oracle_pool(hidden_states, layers, spans):
    return torch.stack([pool_reference.segment_pool(hidden_states[k], spans) for k in layers])


@pytest.mark.slow
def test_capture_equals_output_hidden_states(family):
    name, model, processor = family
    encoded = encode(model, processor)
    batch, spans = encoded.batch, encoded.spans
    parts = resolve(model)
    layers = [parts.num_layers, 0, 2, 1]
    last = encoded.last_positions
    with torch.no_grad():
        oracle = model(**batch, output_hidden_states=True).hidden_states
        with capture(model, layers, spans, logit_lens=True, lens_positions=last) as cap:
            model(**batch)
        with capture(model, [1], spans, stop_after=2) as early:
            assert early.run(model, **batch) is None  # ended after layer 2
    # fp32, the same forward: the hooks read the very tensors output_hidden_states returns, and segment_pool
    # accumulates in fp32 like the reference (summation order alone: ~1e-6 relative).
    torch.testing.assert_close(cap.pooled, oracle_pool(oracle, layers, spans.tensor), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(early.pooled, oracle_pool(oracle, [1], spans.tensor), rtol=1e-5, atol=1e-6)
    rows = torch.arange(len(last))
    expected = torch.stack([
        parts.lm_head(oracle[k][rows, last] if k == parts.num_layers else parts.final_norm(oracle[k][rows, last]))
        for k in layers
    ])  # fmt: skip
    torch.testing.assert_close(cap.logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bf16_capture_within_budget(family):
    name, _, processor = family
    model = tiny_family(name)[0].to(torch.bfloat16)
    encoded = encode(model, processor)
    batch = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in encoded.batch.items()}
    spans = encoded.spans.tensor
    layers = [1, resolve(model).num_layers]
    with torch.no_grad():
        oracle = model(**batch, output_hidden_states=True).hidden_states
        with capture(model, layers, spans) as cap:
            model(**batch)
    # Both read the same bf16 hidden states; they differ only in how the pooling sums and rounds: the fp32 oracle
    # pools the bf16 states in fp32, and the capture may err by at most twice the bf16 reference pooling's own
    # error plus bf16's floor (tga_fast.ops._error_budget).
    for i, k in enumerate(layers):
        fp32 = pool_reference.segment_pool(oracle[k].float(), spans)
        assert_within_budget(cap.pooled[i], fp32, pool_reference.segment_pool(oracle[k], spans), torch.bfloat16)


def explicit_mask(attention_mask: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """Additive fp32 ``[B, 1, T, T]``: causal, padding keys hidden, ``blocked`` keys hidden from later queries."""
    seq_len = attention_mask.shape[1]
    positions = torch.arange(seq_len)
    causal = positions[None, :] <= positions[:, None]
    later = positions[None, :] < positions[:, None]
    visible = causal[None] & attention_mask.bool()[:, None, :] & ~(blocked[:, None, :] & later[None])
    # A padding query that sees nothing would be NaN in eager softmax; let it see itself (its output is unused).
    visible = visible | (torch.eye(seq_len, dtype=torch.bool)[None] & ~visible.any(-1, keepdim=True))
    return torch.where(visible, 0.0, torch.finfo(torch.float32).min)[:, None]


@pytest.fixture(scope="module")
def eager_twin(family):
    """The family's model with the same weights (same seed) and eager attention everywhere."""
    name, model, _ = family
    twin, _ = tiny_family(name, attn_implementation="eager")
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), model.state_dict().values()))
    return twin


@pytest.mark.slow
def test_knockout_equals_eager_with_explicit_mask(family, eager_twin):
    name, model, processor = family
    encoded = encode(model, processor, "left")
    batch = encoded.batch
    seq_len = batch["input_ids"].shape[1]
    blocked = encoded.spans.mask(seq_len, "retrieved") | encoded.spans.mask(seq_len, "image")
    with torch.no_grad():
        with knockout(model, range(1, resolve(model).num_layers + 1), blocked):
            knocked = model(**batch).logits
        explicit = {**batch, "attention_mask": explicit_mask(batch["attention_mask"], blocked)}
        expected = eager_twin(**explicit).logits
        plain = model(**batch).logits
    real = batch["attention_mask"].bool()
    # fp32 throughout: the fused knockout vs eager softmax(QK^T + mask)V, and SDPA vs eager in the vision tower,
    # differ by summation order only (~1e-6 relative per layer, 4 + 2 layers, logits of magnitude ~1).
    torch.testing.assert_close(knocked[real], expected[real], rtol=1e-4, atol=1e-5)
    assert (knocked[real] - plain[real]).abs().max() > 1e-3  # the knockout changed something


@pytest.mark.slow
def test_knockout_in_generate_matches_the_eager_reference(family, eager_twin):
    name, model, processor = family
    encoded = encode(model, processor, "left", count=1)
    batch = encoded.batch
    prompt_len = batch["input_ids"].shape[1]
    blocked = encoded.spans.mask(prompt_len, "retrieved")
    image_inputs = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    pad = processor.tokenizer.pad_token_id
    steps = 4
    with torch.no_grad():
        with knockout(model, [2, 3], blocked):
            generated = model.generate(**batch, max_new_tokens=steps, do_sample=False, pad_token_id=pad)
        # Reference: the eager twin, no KV cache, the whole sequence (image included) re-run at every step under the
        # same knockout: checks the cached decoding path of each family (its positions, its image merge).
        ids = batch["input_ids"]
        for _ in range(steps):
            padded = torch.nn.functional.pad(blocked, (0, ids.shape[1] - prompt_len), value=False)
            with knockout(eager_twin, [2, 3], padded):
                logits = eager_twin(input_ids=ids, attention_mask=torch.ones_like(ids), **image_inputs).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.slow
def test_steer_changes_exactly_the_span_rows(family):
    name, model, processor = family
    encoded = encode(model, processor)
    batch, image = encoded.batch, encoded.spans.select("image")
    dim = model.config.text_config.hidden_size
    vectors = torch.randn(2, dim, generator=torch.Generator().manual_seed(0))
    seen = []
    # What block 3 reads is hidden_states[2]: record it with a pre-hook on that block.
    block3 = resolve(model).decoder_layers[2]
    record = lambda module, args, kwargs: seen.append(hidden_from_pre_hook(args, kwargs).clone())  # noqa: E731
    handle = block3.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**batch)
            with steer(model, [2], image, vectors):
                model(**batch)
            model(**batch)
    finally:
        handle.remove()
    plain, steered, restored = seen
    rows = image.mask(plain.shape[1])  # [B, T]
    assert torch.equal(steered[~rows], plain[~rows])  # every other row untouched, bit for bit
    expected = plain + vectors[:, None, :]
    assert torch.equal(steered[rows], expected[rows])  # the span rows got exactly the vector (one fp32 add)
    assert torch.equal(restored, plain)


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    from tests.training.make_data import write_llava_data

    path = write_llava_data(tmp_path_factory.mktemp("famB_data"), count=8, bad_records=False)
    # Two image samples of other shapes, so a batch pads image inputs of different sizes (tiles, rows, pixels).
    for i, size in zip((0, 1), SIZES):
        random_images(1, size=size, seed=10 + i)[0].save(path.parent / "images" / f"{i}.png")
    return path


def test_training_samples_get_the_family_image_span(family, data_path):
    """Fast loop: TGADataset finds the family's image-runs rule from its processor (the same as the model's) and a
    training sample's image span is the hull of its runs for Mistral 3 and Idefics3; under the strict "one" rule
    such a sample is refused, so the rule is what makes it trainable."""
    from tests.training.train_helpers import IMAGE_SAMPLES
    from tga_fast.models import image_runs_of
    from tga_fast.training.data import DroppedSample, TGADataset

    name, model, processor = family
    runs = EXPECTED[name][0]
    dataset = TGADataset(data_path, processor, progress=False, replace_failed=False)
    assert dataset.image_runs == runs == image_runs_of(model)
    image_token = resolve(model).image_token_id
    split = []
    for i in IMAGE_SAMPLES:
        sample = dataset[i]
        is_image = sample.input_ids == image_token
        start, end = sample.student_spans[0].tolist()
        inside = torch.zeros_like(is_image)
        inside[start:end] = True
        assert is_image[start] and is_image[end - 1] and not (is_image & ~inside).any()
        split.append(runs_of(is_image) > 1)
    assert any(split) == (runs == "hull")  # the data's image shapes do give several runs in the hull families
    if runs == "hull":
        strict = TGADataset(data_path, processor, progress=False, replace_failed=False, image_runs="one")
        dropped = strict[IMAGE_SAMPLES[split.index(True)]]
        assert isinstance(dropped, DroppedSample) and "more than one run" in dropped.reason


def stage2_step(name, processor, data_path, tmp_path, *, lm_weight=1.0, lora=False, checkpointing=False):
    """One TGATrainer stage-2 loss and backward on a fresh copy of the family's model (the image samples of the
    tiny LLaVA-format data: retrieved text, caption, image); returns the model (after backward) and the loss."""
    from tests.training.train_helpers import IMAGE_SAMPLES
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.config import ModelConfig, TGAConfig, TrainConfig
    from tga_fast.training.data import TGADataset
    from tga_fast.training.stages import freeze_for_stage
    from tga_fast.training.trainer import TGATrainer

    model, _ = tiny_family(name)
    freeze_for_stage(model, train_llm=not lora)
    if lora:
        from tga_fast.training.lora import apply_lora

        model = apply_lora(model, ModelConfig(model_name_or_path="unused", train_llm=True, lora_r=4, lora_dropout=0.0))
    dataset = TGADataset(data_path, processor, progress=False)
    tga = TGAConfig(target_layers=[1, 2, 3], lm_loss_weight=lm_weight)
    args = TrainConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, use_cpu=True,
                       report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = TGATrainer(model=model, args=args, train_dataset=dataset, data_collator=TGACollator(processor), tga=tga,
                         target_layers=tga.target_layers)
    batch = TGACollator(processor)([dataset[i] for i in IMAGE_SAMPLES])
    assert bool(batch["align"].any())
    if checkpointing:  # as TrainConfig sets it: non-reentrant (the captured cosines keep their gradient)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return model, loss.detach()


@pytest.mark.slow
def test_collated_batch_equals_each_sample_alone(family, data_path):
    """TGACollator pads each family's image inputs (OneVision's tiles, Pixtral's pixels, Idefics3's tiles and
    pixel mask) so that the model reads each sample as it would alone."""
    from tests.training.train_helpers import IMAGE_SAMPLES
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.data import TGADataset
    from tga_fast.training.trainer import EXTRA_KEYS

    name, model, processor = family
    processor.tokenizer.padding_side = "right"  # the same positions alone and in the batch
    dataset = TGADataset(data_path, processor, progress=False)
    items = [dataset[i] for i in IMAGE_SAMPLES]
    collator = TGACollator(processor)
    inputs = lambda batch: {k: v for k, v in batch.items() if k not in EXTRA_KEYS and k != "labels"}  # noqa: E731
    with torch.no_grad():
        batch = collator(items)
        together = model(**inputs(batch)).logits
        for b, item in enumerate(items):
            alone = model(**inputs(collator([item]))).logits[0]
            length = alone.shape[0]
            mask = batch["attention_mask"][b]
            assert bool(mask[:length].all()) and not bool(mask[length:].any())
            # fp32; the batched and the single forward differ by the kernels' batch-dependent summation order only.
            torch.testing.assert_close(together[b, :length], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_stage2_step_reaches_the_projector(family, data_path, tmp_path):
    from tests.training.train_helpers import grads_of

    name, _, processor = family
    steps = {}
    for lm_weight in (1.0, 0.0):  # the whole loss, then the alignment terms alone
        model, loss = stage2_step(name, processor, data_path, tmp_path, lm_weight=lm_weight)
        parts = resolve(model)
        projector, tower = grads_of(parts.projector), grads_of(parts.vision_tower)
        assert loss.isfinite() and projector.isfinite().all()
        assert projector.abs().max() > 0  # the projector gets a gradient...
        assert tower.abs().max() == 0  # ...the frozen tower none
        steps[lm_weight] = (loss, projector)
    # The alignment terms alone (no LM loss) reach the projector too: the image tokens' states depend on it.
    assert steps[0.0][1].abs().max() > 1e-6
    # Activation checkpointing (non-reentrant, as TrainConfig sets it) recomputes the blocks in the backward: the
    # same loss and projector gradient (fp32, the same kernels on the same inputs: summation order at most).
    model, loss = stage2_step(name, processor, data_path, tmp_path, checkpointing=True)
    torch.testing.assert_close(loss, steps[1.0][0])
    torch.testing.assert_close(grads_of(resolve(model).projector), steps[1.0][1], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_lora_step_trains_adapters_and_projector(family, data_path, tmp_path):
    pytest.importorskip("peft")
    name, _, processor = family
    model, loss = stage2_step(name, processor, data_path, tmp_path, lora=True)
    parts = resolve(model)
    adapted = [n for n, p in parts.decoder_layers.named_parameters() if "lora_" in n]
    assert adapted and not any("lora_" in n for n, _ in parts.vision_tower.named_parameters())
    assert all(p.grad is not None for n, p in parts.decoder_layers.named_parameters() if "lora_B" in n)
    assert any(p.grad.abs().max() > 0 for p in parts.projector.parameters())


@pytest.mark.slow
def test_attention_share_and_skip_layers(family, eager_twin):
    from tga_fast.models import attention_shares, skip_layers

    name, model, processor = family
    encoded = encode(model, processor, "left")
    batch = encoded.batch
    seq_len = batch["input_ids"].shape[1]
    key_set = encoded.spans.mask(seq_len, "image")
    rows = torch.full((2, 1), seq_len - 1)  # the last prompt position (left padding)
    with torch.no_grad():
        with attention_shares(model, key_set, rows) as probe:
            model(**batch)
        attentions = eager_twin(**batch, output_attentions=True).attentions  # N x [B, H, T, T]
        with skip_layers(model, [2]), capture(model, [1, 2], encoded.spans) as skipped:
            model(**batch)
    expected = torch.stack([(a[:, :, -1, :] * key_set[:, None, :]).sum(-1)[..., None] for a in attentions])
    # fp32 softmax shares in [0, 1]; fused op vs eager differ by summation order only.
    torch.testing.assert_close(probe.share, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(skipped.pooled[1], skipped.pooled[0])  # block 2 passed its input through


@pytest.mark.slow
def test_every_analysis_runs(family, tmp_path):
    """Each registered analysis (METHOD.md 3A-3E) runs on the family's image prompts, its result round-trips; short
    generations (the tiny model's words mean nothing: this checks the plumbing, not the verdicts)."""
    import dataclasses

    from tests.analysis.conftest import ROWS, write_eval_set
    from tga_fast.analysis import ANALYSES, run_analysis
    from tga_fast.evaluation.data import load_eval_set

    name, model, processor = family
    rows = [row for row in ROWS if row[0] in ("knife", "pills", "cup")]  # two toxic concepts and a benign one
    samples = load_eval_set(write_eval_set(tmp_path / "data", rows)).samples
    short = {"max_new_tokens": 2, "window": 2, "condition": "image"}
    for analysis, entry in ANALYSES.items():
        fields = {f.name for f in dataclasses.fields(entry.options)}
        options = entry.options(**{k: v for k, v in short.items() if k in fields})
        result = run_analysis(analysis, model, processor, samples, options, batch_size=3, progress=False)
        # Only the benign sample may be left out (the toxic-only analyses use it as no sample); nothing failed.
        assert result.samples and {row["id"] for row in result.skipped} <= {"cup"}, (analysis, result.skipped)
        # Serialisable as saved (the figure is left out: plotting is not family-specific and costs ~1 s each).
        data = json.loads(json.dumps(result.to_json(), allow_nan=False))
        assert type(result).from_json(data).to_json() == data


@pytest.mark.slow
def test_load_model_accepts_a_saved_folder(family, tmp_path):
    from tga_fast.models.loading import load_model

    name, model, processor = family
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    if name == "mistral3" and importlib.util.find_spec("torchvision") is None:
        # transformers 5.24's PixtralProcessor imports torchvision: a clear error, not a bare tokenizer
        from tga_fast.errors import UserError

        with pytest.raises(UserError, match="AutoProcessor gave a .*pip install torchvision"):
            load_model(tmp_path, device="cpu", dtype="float32")
        return
    loaded, loaded_processor = load_model(tmp_path, device="cpu", dtype="float32")
    assert type(loaded) is type(model) and resolve(loaded).model_type == name
    encoded = encode(loaded, loaded_processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**encoded.batch).logits, model(**encoded.batch).logits)
    # 4-bit: the LLM's linear layers are quantised; the family's vision tower, projector and LM head are not (the
    # adapter's module paths are the loader's skip list).
    pytest.importorskip("bitsandbytes")
    quantized, _ = load_model(tmp_path, device="cpu", dtype="float32", quantization="4bit")
    parts = resolve(quantized)

    def linear_kinds(module):
        return {type(m).__name__ for m in module.modules() if isinstance(m, torch.nn.Linear)}

    assert linear_kinds(parts.decoder_layers) == {"Linear4bit"}
    assert linear_kinds(parts.vision_tower) | linear_kinds(parts.projector) | linear_kinds(parts.lm_head) == {"Linear"}
