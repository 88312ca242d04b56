"""The test matrix over the VLM families of ``tga_fast.models.tiny_families.TINY_FAMILIES``.

Per family, a cheap smoke in the fast loop (adapter parts, image span = the processor's expanded image tokens,
text pieces on their tokens, content order) and, marked slow: capture vs pooled ``output_hidden_states`` (fp32,
bf16), the logit lens at layer N vs the model's logits, knockout vs an explicit additive mask in eager attention
(the family's own mask included) in a forward and in ``generate``, steering touching exactly the chosen rows (and
no decoding step), ``attention_shares`` vs eager ``output_attentions``, ``skip_layers``, the image reaching the LLM
at its span, the five analyses and DSR, a TGATrainer stage-2 step (full and LoRA) reaching the projector with
causal answer logits, and ``load_model`` on a saved checkpoint. Adding a family is one registry entry in
``tiny_families.py`` plus its adapter entry: its mask and inputs come from the adapter data, never from this file.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from tga_fast.models import capture, knockout, resolve, steer
from tga_fast.models.prompts import Prompt, encode_prompts
from tga_fast.models.tiny import random_images
from tga_fast.models.tiny_families import TINY_FAMILIES, tiny_family

# Part B's families (LLaVA-OneVision, Mistral 3, Idefics3) have their own matrix, test_families_b.py: several image
# runs per image and images of two shapes, which this one's smoke (one run per image) does not describe.
PART_B = ("idefics3", "llava_onevision", "mistral3")
FAMILIES = sorted(set(TINY_FAMILIES) - set(PART_B))
PROMPTS = [
    Prompt("what is in this image?", image=True, retrieved="a red knife"),
    Prompt("how do i use this?", image=True),
]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """``(sdpa model, eager twin with the same weights, processor, batch, spans)``, built once per family."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        model, processor = tiny_family(request.param)
        eager, _ = tiny_family(request.param, attn_implementation="eager")
        eager.load_state_dict(model.state_dict())
        parts = resolve(model)
        processor.tokenizer.padding_side = "left"  # as generation pads; the short prompt gets padding
        images = random_images(len(PROMPTS), size=TINY_FAMILIES[request.param].image_size)
        encoded = encode_prompts(processor, PROMPTS, images, image_token_id=parts.image_token_id,
                                 image_runs=parts.architecture.image_runs)
    return model, eager, processor, dict(encoded.batch), encoded.spans


# ---- the smoke (fast loop) ----------------------------------------------------------------------------------------


def test_family_resolves_and_finds_the_image_span(family):
    model, _, _, batch, spans = family
    parts = resolve(model)
    assert parts.vision_tower is not None and parts.projector is not None and parts.image_token_id is not None
    image = spans["image"]  # [B, 2]
    is_image = batch["input_ids"] == parts.image_token_id
    assert torch.equal(image[:, 1] - image[:, 0], is_image.sum(dim=1))  # one run per image in these families
    for b in range(len(PROMPTS)):
        assert bool(is_image[b, image[b, 0] : image[b, 1]].all())
    for name in parts.architecture.token_inputs + parts.architecture.image_inputs:
        assert name in batch, f"the processor gives no {name}"
    # The text pieces land on their own tokens (offsets shifted past the expanded image).
    tokenizer = family[2].tokenizer
    question = spans["question"][0]
    assert tokenizer.decode(batch["input_ids"][0, question[0] : question[1]]).strip() == PROMPTS[0].question
    retrieved = spans["retrieved"][0]
    assert retrieved[1] <= image[0, 0] < image[0, 1] <= question[0]  # content order kept: retrieved, image, question


def test_image_runs_hull_covers_the_break_tokens():
    ids = torch.tensor([[5, 9, 9, 7, 9, 9, 7, 3], [5, 9, 9, 9, 9, 3, 3, 3]])
    from tga_fast.models.spans import image_token_spans

    assert image_token_spans(ids, 9, "hull")[:, 0].tolist() == [[1, 6], [1, 5]]
    with pytest.raises(ValueError, match="more than one run"):
        image_token_spans(ids, 9, "one")


# ---- references built from the adapter data ----------------------------------------------------------------------


def own_mask(model, batch, blocked=None) -> torch.Tensor:
    """bool ``[B, 1, T, T]``: what each query sees under the family's own mask (causal and padding, plus the image
    block for ``attention_mask="image_block"``), with ``blocked`` keys (bool ``[B, T]``) hidden from every other
    query."""
    arch = resolve(model).architecture
    valid = batch["attention_mask"].bool()
    length = valid.shape[1]
    positions = torch.arange(length)
    visible = (positions[None, :] <= positions[:, None])[None] & valid[:, None, :]
    if arch.attention_mask == "image_block":
        image = batch["input_ids"] == resolve(model).image_token_id
        # One image per sample here: its tokens form one block that sees itself.
        visible = visible | (image[:, :, None] & image[:, None, :])
    elif arch.attention_mask == "prefix":
        # token_type_ids 0 = the prefix, one block that sees itself; padding stays invisible.
        prefix = (batch["token_type_ids"] == 0) & valid
        visible = visible | (prefix[:, :, None] & prefix[:, None, :])
    elif arch.attention_mask != "causal":
        raise NotImplementedError(arch.attention_mask)
    if blocked is not None:
        other = positions[:, None] != positions[None, :]
        visible = visible & ~(blocked[:, None, :] & other[None])
    # A padding query seeing nothing gives NaN in eager softmax: let it see itself (its output is unused).
    visible = visible | torch.eye(length, dtype=torch.bool)[None]
    return visible[:, None]


def eager_reference(model, eager, batch, blocked=None, **extra):
    """The eager twin's forward with the family's own mask (and knockout) as an explicit additive mask."""
    visible = own_mask(model, batch, blocked)
    additive = torch.zeros(visible.shape, dtype=torch.float32).masked_fill(~visible, torch.finfo(torch.float32).min)
    inputs = dict(batch)
    rope_index = getattr(model.model, "get_rope_index", None)
    if rope_index is not None:  # Qwen's 3-D positions come from the 2-D mask: computed by the model, given explicitly
        inputs["position_ids"] = rope_index(
            batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"],
        )[0]
    # Gemma-style models take a {layer type: mask} mapping as given (else they build their own non-causal masks).
    layer_types = set(getattr(model.config.get_text_config(), "layer_types", None) or ())
    non_causal = resolve(model).architecture.attention_mask != "causal"
    inputs["attention_mask"] = {kind: additive for kind in layer_types} if layer_types and non_causal else additive
    return eager(**inputs, **extra)


def every_block(model) -> list[int]:
    return list(range(1, resolve(model).num_layers + 1))


# ---- the matrix (slow) --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_capture_equals_pooled_output_hidden_states(family, dtype):
    """capture's pooled spans vs a float64 mean over ``output_hidden_states`` of the same forward: the same
    tensors, so the only error is the pooling's own (fp32 accumulation, then rounding to the hidden dtype: at most
    half an ulp of the output dtype, 2^-9 relative in bf16; n * 2^-24 in fp32 for n <= 64 rows)."""
    model, _, _, batch, spans = family
    model = copy.deepcopy(model).to(dtype)  # the shared model keeps its fp32 weights
    if True:
        parts = resolve(model)
        layers = list(range(parts.num_layers + 1))
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
        with torch.no_grad(), capture(model, layers=layers, spans=spans) as cap:
            out = model(**inputs, output_hidden_states=True)
        assert len(out.hidden_states) == parts.num_layers + 1
        relative = 2.0**-8 if dtype == torch.bfloat16 else 64 * 2.0**-24
        for i, k in enumerate(layers):
            hidden = out.hidden_states[k].double()
            for b in range(hidden.shape[0]):
                for s, (start, end) in enumerate(spans.tensor[b].tolist()):
                    expected = hidden[b, start:end].mean(0) if end > start else torch.zeros(hidden.shape[-1])
                    got = cap.pooled[i, b, s].double()
                    scale = hidden[b, start:end].abs().mean(0) if end > start else torch.zeros(hidden.shape[-1])
                    assert bool(((got - expected).abs() <= relative * scale + 1e-30).all()), (k, b, s)


@pytest.mark.slow
def test_knockout_equals_eager_with_an_explicit_mask(family):
    """knockout at every block (the fused op, or the family's own mask minus the blocked keys) vs eager attention
    with the same visibility as an additive mask. fp32; SDPA / the fused op and eager differ only by summation
    order (~1e-6 relative per layer): 1e-4 absolute on logits of magnitude ~1."""
    model, eager, _, batch, spans = family
    blocked = spans.mask(batch["input_ids"].shape[1], "question")
    with torch.no_grad():
        with knockout(model, every_block(model), blocked):
            got = model(**batch).logits
        expected = eager_reference(model, eager, batch, blocked).logits
        plain = model(**batch).logits
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-4, rtol=1e-4)
    assert (got[valid] - plain[valid]).abs().max() > 1e-3  # the knockout did something


@pytest.mark.slow
def test_model_mask_reference_matches_the_plain_model(family):
    """The reference's own mask is the family's: without knockout, eager with the explicit mask equals the
    model (so the knockout test compares like with like, the image block included)."""
    model, eager, _, batch, _ = family
    with torch.no_grad():
        expected = eager_reference(model, eager, batch).logits
        got = model(**batch).logits
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-4, rtol=1e-4)


def _block_inputs(model, layer: int, run):
    """The ``[B, T, D]`` inputs of the block reading ``hidden_states[layer]``, at each forward of ``run()``."""
    from tga_fast.models.hooks import hidden_from_pre_hook

    seen = []
    block = resolve(model).decoder_layers[layer]
    handle = block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(hidden_from_pre_hook(args, kwargs).clone()), with_kwargs=True
    )
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.mark.slow
def test_steer_changes_exactly_the_chosen_rows(family):
    """Adding v at layer 2 to the image span changes the rows of that span by v and no other row of
    ``hidden_states[2]``."""
    model, _, _, batch, spans = family
    image = spans.select("image")
    vector = torch.randn(batch["input_ids"].shape[0], model.config.get_text_config().hidden_size)
    with torch.no_grad():
        (plain,) = _block_inputs(model, 2, lambda: model(**batch))
        with steer(model, [2], image, vector):
            (steered,) = _block_inputs(model, 2, lambda: model(**batch))
    rows = image.mask(plain.shape[1])
    delta = steered - plain
    assert torch.equal(delta[~rows], torch.zeros_like(delta[~rows]))
    expected = vector[:, None, :].expand_as(delta)[rows]
    torch.testing.assert_close(delta[rows], expected, atol=1e-5, rtol=0)  # (h + v) - h in fp32: |h| * 2^-24


@pytest.mark.slow
def test_steer_in_generate_leaves_decoding_rows_alone(family):
    """Steering layer 0 over a span that starts at position 0 (PaliGemma's image does): the prompt's rows get v,
    every decoding step's row is its token's plain embedding (a row count restarting at 0 would steer it)."""
    model, _, processor, batch, _ = family
    parts = resolve(model)
    vector = torch.ones(batch["input_ids"].shape[0], model.config.get_text_config().hidden_size)
    span = torch.tensor([[[0, 3]]] * batch["input_ids"].shape[0])
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad(), steer(model, [0], span, vector):
        seen = _block_inputs(model, 0, lambda: model.generate(**batch, max_new_tokens=3, do_sample=False,
                                                                min_new_tokens=3, pad_token_id=pad))
    prefill, steps = seen[0], seen[1:]
    assert len(steps) == 2 and all(step.shape[1] == 1 for step in steps)
    with torch.no_grad():
        (plain,) = _block_inputs(model, 0, lambda: model(**batch))
    assert torch.equal(prefill[:, 3:], plain[:, 3:])
    torch.testing.assert_close(prefill[:, :3], plain[:, :3] + 1, atol=1e-5, rtol=0)
    embed = parts.input_embeddings
    for step in steps:
        # The embedding layer's output for these tokens (with the family's own scaling, e.g. Gemma's sqrt(D)).
        tokens = _tokens_of(model, step)
        torch.testing.assert_close(step, embed(tokens), atol=0, rtol=0)


def _tokens_of(model, rows: torch.Tensor) -> torch.Tensor:
    """The token ids whose embedding is each ``[B, 1, D]`` row (nearest embedding row; exact for a plain lookup)."""
    weight = resolve(model).input_embeddings.weight
    scaled = resolve(model).input_embeddings(torch.arange(weight.shape[0]))  # [V, D] with the family's scaling
    distance = (rows[:, 0, None, :] - scaled[None]).abs().sum(-1)  # [B, V]
    return distance.argmin(-1)[:, None]


@pytest.mark.slow
def test_generate_with_knockout_matches_the_eager_reference(family):
    """Greedy ``generate`` under knockout (KV cache, the family's positions) vs one eager forward of the prompt
    and the generated tokens with the knockout as an explicit mask: the same logits at every step."""
    model, eager, processor, batch, spans = family
    blocked = spans.mask(batch["input_ids"].shape[1], "question")
    steps = 3
    with torch.no_grad(), knockout(model, every_block(model), blocked):
        out = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                             output_logits=True, return_dict_in_generate=True,
                             pad_token_id=processor.tokenizer.pad_token_id)
    full = dict(batch)
    length = batch["input_ids"].shape[1]
    full["input_ids"] = out.sequences
    extend = lambda t, value: torch.cat([t, t.new_full((t.shape[0], steps), value)], dim=1)  # noqa: E731
    full["attention_mask"] = extend(batch["attention_mask"], 1)
    arch = resolve(model).architecture
    for name in arch.token_inputs:
        # Generated tokens are text (0), and for a prefix-LM the answer after the prefix (token type 1).
        full[name] = extend(batch[name], int(arch.attention_mask == "prefix" and name == "token_type_ids"))
    full_blocked = torch.cat([blocked, torch.zeros(blocked.shape[0], steps, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        reference = eager_reference(model, eager, full, full_blocked).logits
    for i, score in enumerate(out.logits):  # raw logits (scores have min_new_tokens' -inf on EOS)
        torch.testing.assert_close(score, reference[:, length - 1 + i], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_training_step_reaches_the_projector(family, tmp_path):
    """One TGATrainer stage-2 loss (alignment terms on) on the family's own processor and data: the gradient
    reaches the projector, and the vision tower's other parameters stay frozen."""
    from tests.training.make_data import write_llava_data
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.config import TGAConfig, TrainConfig
    from tga_fast.training.data import TGADataset
    from tga_fast.training.stages import freeze_for_stage
    from tga_fast.training.trainer import TGATrainer

    model, _, processor, _, _ = family
    processor.tokenizer.padding_side = "right"
    data = write_llava_data(tmp_path, count=8, bad_records=False)
    dataset = TGADataset(data, processor, progress=False)
    freeze_for_stage(model, train_llm=True)
    try:
        tga = TGAConfig(target_layers=[1, 2, 3])
        trainer = TGATrainer(
            model=model.train(),
            args=TrainConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True),
            train_dataset=dataset, data_collator=TGACollator(processor), tga=tga, target_layers=tga.target_layers,
        )
        items = [dataset[i] for i in range(len(dataset)) if dataset.records[i].image is not None][:2]
        batch = TGACollator(processor)(items)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        projector = resolve(model).projector
        grads = [p.grad for p in projector.parameters()]
        assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
        assert bool(torch.isfinite(loss))
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(True)
        model.eval()
        processor.tokenizer.padding_side = "left"


@pytest.mark.slow
def test_attention_shares_equal_eager_output_attentions(family):
    """The share of the last position's attention on the image span, per block and head, vs eager
    ``output_attentions`` under the family's own mask (fp32 softmax either way: 1e-5)."""
    from tga_fast.models import attention_shares

    model, eager, _, batch, spans = family
    length = batch["input_ids"].shape[1]
    key_set = spans.mask(length, "image")
    rows = torch.full((key_set.shape[0], 1), length - 1)  # left padding: the last position is real
    with torch.no_grad():
        with attention_shares(model, key_set, rows) as shares:
            model(**batch)
        attentions = eager_reference(model, eager, batch, output_attentions=True).attentions  # N x [B, H, T, T]
    for block, attention in enumerate(attentions, start=1):
        expected = (attention[:, :, -1, :] * key_set[:, None, :]).sum(-1)[..., None]  # [B, H, 1]
        torch.testing.assert_close(shares.share[block - 1], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_skip_layers_passes_the_input_through(family):
    from tga_fast.models import skip_layers

    model, _, _, batch, _ = family
    with torch.no_grad(), skip_layers(model, [2]):
        (before,) = _block_inputs(model, 1, lambda: model(**batch))
        (after,) = _block_inputs(model, 2, lambda: model(**batch))
    assert torch.equal(before, after)


@pytest.mark.slow
def test_analyses_run(family, tmp_path):
    """The five analyses and the DSR evaluation (image with retrieved text, text) run end to end on the family's
    own prompts (image and text conditions, padded batches, generation under knockout and steering)."""
    from tests.analysis.conftest import write_eval_set
    from tga_fast.analysis import (
        attention_share,
        knockout_sweep,
        modality_similarity,
        safety_layers,
        steering_sweep,
    )
    from tga_fast.evaluation.data import load_eval_set
    from tga_fast.evaluation.dsr import evaluate_dsr

    model, _, processor, _, _ = family
    samples = load_eval_set(write_eval_set(tmp_path)).samples
    share = attention_share(model, processor, samples, batch_size=3, progress=False)
    similarity = modality_similarity(model, processor, samples[:3], batch_size=3, progress=False)
    layers = safety_layers(model, processor, samples, batch_size=4, max_new_tokens=2, progress=False)
    toxic = [s for s in samples if s.toxic][:2]
    knocked = knockout_sweep(model, processor, toxic, batch_size=2, window=2, max_new_tokens=2, progress=False)
    steered = steering_sweep(model, processor, toxic, batch_size=2, window=2, controls=(), max_new_tokens=2,
                             progress=False)
    dsr = evaluate_dsr(model, processor, samples, condition="image", with_retrieved=True, batch_size=3,
                       max_new_tokens=2, progress=False)
    text_dsr = evaluate_dsr(model, processor, samples, condition="text", batch_size=3, max_new_tokens=2,
                            progress=False)
    for result in (share, similarity, knocked, steered, dsr, text_dsr):
        assert result.to_json()
    assert layers.verdict


@pytest.mark.slow
def test_load_model_and_lora_targets(family, tmp_path):
    """A saved tiny checkpoint of the family loads through ``load_model`` (processor included, offline) into the
    same logits; LoRA finds its default targets in the decoder blocks."""
    from tga_fast.models.loading import load_model
    from tga_fast.training.lora import lora_target_regex

    model, _, processor, batch, _ = family
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_model(tmp_path, device="cpu", dtype="float32")
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    assert type(loaded_processor) is type(processor)
    text = "USER: hi ASSISTANT:"
    assert loaded_processor.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    assert "q_proj" in lora_target_regex(loaded)


@pytest.mark.slow
def test_training_logits_are_causal_on_the_answer(family, tmp_path):
    """The student pass the trainer runs (its own inputs, ``token_type_ids`` of a prefix-LM included): changing
    the last answer token changes no logit before it, so no answer token sees the ones it predicts."""
    from tests.training.make_data import write_llava_data
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.config import TGAConfig, TrainConfig
    from tga_fast.training.data import TGADataset
    from tga_fast.training.trainer import TGATrainer

    model, _, processor, _, _ = family
    processor.tokenizer.padding_side = "right"
    try:
        dataset = TGADataset(write_llava_data(tmp_path, count=4, bad_records=False), processor, progress=False)
        tga = TGAConfig(target_layers=[1])
        trainer = TGATrainer(
            model=model, args=TrainConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none"),
            train_dataset=dataset, data_collator=TGACollator(processor), tga=tga, target_layers=tga.target_layers,
        )
        item = next(dataset[i] for i in range(len(dataset)) if dataset.records[i].image is not None)
        batch = TGACollator(processor)([item])
        seen = []
        handle = model.register_forward_hook(lambda m, args, kwargs, out: seen.append(out.logits), with_kwargs=True)
        try:
            with torch.no_grad():
                trainer.compute_loss(model, dict(batch))
                answer = (batch["labels"][0] != -100).nonzero()[:, 0]
                last = int(answer[-1])
                changed = dict(batch, input_ids=batch["input_ids"].clone())
                other = processor.tokenizer(" cat", add_special_tokens=False)["input_ids"][0]  # an ordinary word
                other = other if other != int(batch["input_ids"][0, last]) else other + 1
                changed["input_ids"][0, last] = other
                trainer.compute_loss(model, changed)
        finally:
            handle.remove()
        student, student_changed = seen  # the teacher pass stops before the LM head
        torch.testing.assert_close(student[0, :last], student_changed[0, :last], atol=0, rtol=0)
    finally:
        processor.tokenizer.padding_side = "left"


def test_env_lists_every_family_with_what_runs():
    from tga_fast.diagnostics import model_family_lines
    from tga_fast.models.adapters import ARCHITECTURES

    lines = model_family_lines()
    listed = {line.split()[0]: line for line in lines[1:]}
    assert set(listed) == set(ARCHITECTURES)
    assert set(TINY_FAMILIES) <= set(ARCHITECTURES)  # every tiny family has its adapter entry
    assert "token_type_ids" in listed["gemma3"] and "image_block" in listed["gemma3"]


@pytest.mark.slow
def test_logit_lens_at_the_last_layer_is_the_models_logits(family):
    """capture's logit lens at layer N (final norm once, the family's soft-capping) equals the model's own
    next-token logits: the same tensors through the same head, fp32 (1e-5)."""
    model, _, _, batch, spans = family
    parts = resolve(model)
    with torch.no_grad(), capture(model, [1, parts.num_layers], spans, logit_lens=True) as cap:
        logits = model(**batch).logits
    torch.testing.assert_close(cap.logits[-1], logits[:, -1].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_lora_step_trains_the_adapters_and_the_projector(family, tmp_path):
    """Stage 2 with LoRA (a copy of the shared model: peft injects its layers in place): adapters go only into
    the LLM's decoder blocks, and one TGATrainer loss reaches the adapters and the projector, nothing else."""
    from tests.training.make_data import write_llava_data
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.config import ModelConfig, TGAConfig, TrainConfig
    from tga_fast.training.data import TGADataset
    from tga_fast.training.lora import apply_lora
    from tga_fast.training.stages import freeze_for_stage
    from tga_fast.training.trainer import TGATrainer

    shared, _, processor, _, _ = family
    model = copy.deepcopy(shared)
    parts = resolve(model)
    freeze_for_stage(model, train_llm=False)
    peft_model = apply_lora(model, ModelConfig(train_llm=True, lora_r=4, lora_alpha=8.0, lora_dropout=0.0))
    in_llm = {id(m) for m in parts.decoder_layers.modules()}
    adapted = [m for name, m in peft_model.named_modules() if hasattr(m, "lora_A")]
    assert adapted and all(id(m) in in_llm for m in adapted)
    processor.tokenizer.padding_side = "right"
    try:
        dataset = TGADataset(write_llava_data(tmp_path, count=4, bad_records=False), processor, progress=False)
        tga = TGAConfig(target_layers=[1, 2])
        trainer = TGATrainer(
            model=peft_model.train(), args=TrainConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none"),
            train_dataset=dataset, data_collator=TGACollator(processor), tga=tga, target_layers=tga.target_layers,
        )
        items = [dataset[i] for i in range(len(dataset)) if dataset.records[i].image is not None][:2]
        trainer.compute_loss(peft_model, dict(TGACollator(processor)(items))).backward()
    finally:
        processor.tokenizer.padding_side = "left"
    projector = {id(p) for p in parts.projector.parameters()}
    for name, p in peft_model.named_parameters():
        trains = "lora_" in name or id(p) in projector
        assert p.requires_grad == trains, name
        if trains and "lora_A" not in name:  # lora_B starts at zero, so lora_A's first gradient is zero
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


@pytest.mark.slow
def test_the_image_reaches_the_llm_at_its_span(family):
    """Other pixels change ``hidden_states[0]`` on the image span and nowhere else: the projector's output is
    scattered exactly into the image tokens (a zero-initialised projector would make every image alike)."""
    model, _, _, batch, spans = family
    other = dict(batch, pixel_values=batch["pixel_values"].flip(0) + 0.5)
    with torch.no_grad():
        (first,) = _block_inputs(model, 0, lambda: model(**batch))
        (second,) = _block_inputs(model, 0, lambda: model(**other))
    changed = (first - second).abs().amax(-1) > 0  # [B, T]
    assert torch.equal(changed, spans.mask(changed.shape[1], "image"))
