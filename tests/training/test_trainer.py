"""TGATrainer on a tiny random LLaVA, single process, with the real dataset and collator."""

from __future__ import annotations

import json

import pytest
import torch

from tests.training.train_helpers import IMAGE_SAMPLES, ROOT, base_args, grads_of, step_losses
from tga_fast.models import resolve
from tga_fast.training.config import TGAConfig, TrainConfig
from tga_fast.training.loss import tga_alignment_loss


def load(model_path, train_llm=True):
    from tga_fast.training.config import ModelConfig
    from tga_fast.training.stages import freeze_for_stage, load_model

    model, processor = load_model(ModelConfig(model_name_or_path=str(model_path), dtype="float32"))
    freeze_for_stage(model, train_llm)
    return model, processor


class Repeat(torch.utils.data.Dataset):
    """The same few samples over and over: one repeated batch when ``len(indices)`` is the batch size."""

    def __init__(self, dataset, indices, length=64):
        self.dataset, self.indices, self.length = dataset, list(indices), length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.dataset[self.indices[i % len(self.indices)]]


def make_trainer(files, tmp_path, *, tga=None, train_llm=True, indices=IMAGE_SAMPLES, **overrides):
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.data import TGADataset
    from tga_fast.training.trainer import TGATrainer

    model_path, data_path = files
    model, processor = load(model_path, train_llm)
    dataset = TGADataset(data_path, processor, progress=False)
    options = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=len(indices), max_steps=6, learning_rate=1e-2,
        logging_steps=1, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
        train_sampling_strategy="sequential",  # with Repeat: the very same batch at every step
    )  # fmt: skip
    options.update(overrides)
    trainer = TGATrainer(
        model=model,
        args=TrainConfig(**options),
        train_dataset=Repeat(dataset, indices),
        data_collator=TGACollator(processor),
        tga=tga or TGAConfig(target_layers=[1, 2, 3]),
        target_layers=(tga or TGAConfig(target_layers=[1, 2, 3])).target_layers,
    )
    batch = TGACollator(processor)([dataset[i] for i in indices])
    return trainer, batch


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_loss_decreases_on_a_repeated_batch(files, tmp_path):
    trainer, _ = make_trainer(files, tmp_path, max_steps=6)
    trainer.train()
    losses = logged(trainer, "loss")
    assert len(losses) == 6
    assert losses[-1] < 0.9 * losses[0], losses
    # the logged parts add up to the logged loss (the loss is CE + pair + hinge)
    for entry in trainer.state.log_history:
        if "loss" in entry:
            assert entry["ce"] + entry["pair"] + entry["hinge"] == pytest.approx(entry["loss"], rel=1e-4)
            assert {"cos/layer_1", "cos/layer_2", "cos/layer_3"} <= set(entry)


def alignment_grad(files, tmp_path, faithful):
    """The projector's gradient from the alignment terms alone: grad(CE + terms) - grad(CE), same batch."""
    grads, losses = [], []
    for align in (True, False):
        tga = TGAConfig(target_layers=[1, 2, 3], faithful_reference=faithful, align=align)
        trainer, batch = make_trainer(files, tmp_path, tga=tga, train_llm=False)
        model = trainer.model.train()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads.append(grads_of(resolve(model).projector))
        losses.append(loss.detach())
    return grads[0] - grads[1], losses[0] - losses[1]


def test_alignment_terms_train_the_projector_by_default(files, tmp_path):
    grad, added = alignment_grad(files, tmp_path, faithful=False)
    assert added > 0  # pair and hinge are positive
    assert grad.abs().max() > 1e-5


def test_faithful_reference_adds_the_terms_without_gradient(files, tmp_path):
    grad, added = alignment_grad(files, tmp_path, faithful=True)
    assert added > 0  # the same numbers as the released code: in the loss value...
    assert torch.equal(grad, torch.zeros_like(grad))  # ...and nothing in the gradient


def test_cosines_rise_when_only_the_alignment_terms_train(files, tmp_path):
    tga = TGAConfig(target_layers=[1, 2, 3], lm_loss_weight=0.0)
    trainer, _ = make_trainer(files, tmp_path, tga=tga, train_llm=False, max_steps=8, learning_rate=3e-2)
    trainer.train()
    for layer in (1, 2, 3):
        cosines = logged(trainer, f"cos/layer_{layer}")
        assert cosines[-1] > cosines[0] + 0.05, (layer, cosines)
    pairs = logged(trainer, "pair")
    assert pairs[-1] < pairs[0]


def test_gradient_checkpointing_gives_the_same_gradient(files, tmp_path):
    results = []
    for checkpointing in (False, True):
        trainer, batch = make_trainer(files, tmp_path, train_llm=True)
        model = trainer.model
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((loss.detach(), grads_of(resolve(model).projector), grads_of(resolve(model).decoder_layers)))
    (loss, projector, layers), (loss_ckpt, projector_ckpt, layers_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss)
    torch.testing.assert_close(projector_ckpt, projector, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(layers_ckpt, layers, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # several full training steps
def test_gradient_accumulation_matches_one_big_batch(files, tmp_path):
    """Batch 4 in one step == batch 2 twice with accumulation: the same loss, the same t for both micro-batches
    (t = optimizer step / max_steps), hence the same terms, cosines and update (SGD: the update is the gradient)."""
    runs = []
    for batch, accumulation in ((4, 1), (2, 2)):
        trainer, _ = make_trainer(
            files, tmp_path / f"b{batch}", indices=IMAGE_SAMPLES, max_steps=3, per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, optim="sgd",
        )  # fmt: skip
        initial = [p.detach().clone() for p in resolve(trainer.model).projector.parameters()]
        trainer.train()
        final = [p.detach().clone() for p in resolve(trainer.model).projector.parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(initial, final))
        logs = {key: logged(trainer, key) for key in ("loss", "pair", "hinge", "cos/layer_2")}
        runs.append((logs, torch.cat([p.flatten() for p in final])))
    (logs, projector), (logs_ga, projector_ga) = runs
    for key, values in logs.items():
        assert len(values) == 3 and logs_ga[key] == pytest.approx(values, rel=1e-4), key
    torch.testing.assert_close(projector_ga, projector, rtol=1e-4, atol=1e-6)


def test_teacher_pass_restores_every_modules_mode(files, tmp_path):
    """The teacher pass runs in eval mode, the student pass in train mode, and afterwards (also after an error in
    the teacher pass) every module is back in its own mode: a module the user keeps in eval stays there."""
    trainer, batch = make_trainer(files, tmp_path)
    model = trainer.model.train()
    parts = resolve(model)
    parts.vision_tower.eval()
    modes = {name: module.training for name, module in model.named_modules()}
    seen = []
    hook = parts.decoder_layers[0].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        trainer.compute_loss(model, dict(batch))
        assert seen == [False, True]  # teacher (eval), student (train)
        assert {name: module.training for name, module in model.named_modules()} == modes
        bad = dict(batch, teacher_spans=batch["teacher_spans"] + 10_000)  # fails inside the teacher forward
        with pytest.raises(ValueError):
            trainer.compute_loss(model, bad)
        assert {name: module.training for name, module in model.named_modules()} == modes
    finally:
        hook.remove()


@pytest.mark.slow  # several full training steps
def test_bf16_autocast_step(files, tmp_path):
    """bf16 autocast (teacher and student passes): the first step's loss and terms are fp32's within bf16 error."""
    runs = {}
    for bf16 in (False, True):
        trainer, _ = make_trainer(files, tmp_path / str(bf16), max_steps=2, bf16=bf16)
        trainer.train()
        runs[bf16] = {key: logged(trainer, key) for key in ("loss", "pair", "hinge")}
    assert len(runs[True]["loss"]) == 2 and all(torch.isfinite(torch.tensor(runs[True]["loss"])))
    for key in ("loss", "pair", "hinge"):
        assert runs[True][key][0] == pytest.approx(runs[False][key][0], rel=3e-2), key


def test_batches_without_images_or_alignment(files, tmp_path):
    """Toxic and text-only samples only: the LM loss trains alone (loss = CE), both alignment terms are exactly 0
    and no cosine is logged."""
    trainer, _ = make_trainer(files, tmp_path, indices=(3, 4, 7), max_steps=2)
    trainer.train()
    assert logged(trainer, "pair") == [0.0, 0.0]
    assert logged(trainer, "hinge") == [0.0, 0.0]
    assert logged(trainer, "ce") == pytest.approx(logged(trainer, "loss"), rel=1e-6)
    assert not logged(trainer, "cos/layer_1")


def test_hinge_mask_leaves_out_samples_without_retrieved_text():
    image = torch.tensor([[0.2, 0.5], [0.1, 0.3]])
    retrieved = torch.tensor([[0.4, 0.0], [0.6, 0.0]])  # sample 1 has no retrieved text: its cosine is 0
    masked = tga_alignment_loss(image, retrieved, progress=0.0, hinge_mask=torch.tensor([True, False]))
    expected = 0.1 / 4 * (torch.exp(retrieved[:, 0] - image[:, 0])).sum()
    torch.testing.assert_close(masked.hinge, expected)
    unmasked = tga_alignment_loss(image, retrieved, progress=0.0)
    torch.testing.assert_close(masked.pair, unmasked.pair)
    with pytest.raises(ValueError, match="hinge_mask"):
        tga_alignment_loss(image, retrieved, progress=0.0, hinge_mask=torch.tensor([True]))


@pytest.mark.parametrize("train_llm", [False, True])
def test_stages_freeze_the_vision_tower(files, train_llm):
    model, _ = load(files[0], train_llm)
    parts = resolve(model)
    assert not any(p.requires_grad for p in parts.vision_tower.parameters())
    assert all(p.requires_grad for p in parts.projector.parameters())
    assert all(p.requires_grad == train_llm for p in parts.decoder_layers.parameters())
    assert parts.lm_head.weight.requires_grad == train_llm


def test_projector_export_round_trip(files, tmp_path):
    from tga_fast.training.export import export_projector, load_projector

    model, _ = load(files[0])
    with torch.no_grad():
        for p in resolve(model).projector.parameters():
            p.add_(1.0)
    path = export_projector(model, tmp_path / "projector.safetensors")
    fresh, _ = load(files[0])
    keys = load_projector(fresh, path)
    assert keys and all(k.startswith("model.multi_modal_projector.") for k in keys)
    for got, want in zip(resolve(fresh).projector.parameters(), resolve(model).projector.parameters()):
        torch.testing.assert_close(got, want)
    from safetensors.torch import save_file

    save_file({"model.multi_modal_projector.other.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="do not match the projector"):
        load_projector(fresh, tmp_path / "bad.safetensors")


def test_cli_train_one_process(files, tmp_path):
    """``tga-fast train <preset> ...``: a stage-1 run end to end, the projector exported, the log written."""
    from tga_fast.cli import main as cli

    model_path, data_path = files
    out = tmp_path / "cli"
    args = base_args(
        model_path, data_path, out, max_steps=2, target_layers=[1, 2], per_device_train_batch_size=2,
        bf16="false", activation_checkpointing="true", dataloader_num_workers=0, save_full_model="true",
    )  # fmt: skip
    assert cli(["train", str(ROOT / "configs" / "stage1_pretrain.json"), *args]) == 0
    assert sorted(step_losses(out)) == [1, 2]
    assert (out / "projector.safetensors").is_file()
    assert (out / "model.safetensors").is_file()
    history = json.loads((out / "log_history.json").read_text())
    assert any("cos/layer_2" in entry for entry in history)


def test_modality_grouped_sampler():
    from tga_fast.training.sampler import ModalityGroupedSampler

    has_image = [True, True, False, True, False, True, True, False, True, True, True]  # 8 with, 3 without
    sampler = ModalityGroupedSampler(has_image, group_size=4, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == 8 + 4  # the text-only group filled to 4 with repeats
    assert set(order) == set(range(len(has_image)))
    groups = [order[i : i + 4] for i in range(0, len(order), 4)]
    assert all(len({has_image[i] for i in group}) == 1 for group in groups)  # one modality per step
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(set(sampler)) == sorted(set(order))


def test_metrics_accumulate_without_host_reads(files, tmp_path, monkeypatch):
    """What the trainer adds after the forward (the terms and the metric sums) reads nothing back to the host;
    the values become floats only in the log. The batch mixes image samples with a toxic and a text-only one."""
    trainer, batch = make_trainer(files, tmp_path, indices=(0, 1, 3, 4))
    model = trainer.model.train()
    hf_model = model
    extras = {key: batch[key] for key in ("teacher_input_ids", "teacher_attention_mask", "teacher_spans")}
    targets = trainer._teacher_targets(model, hf_model, extras)
    from tga_fast.models import capture

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    with capture(model, trainer.target_layers, batch["student_spans"], targets=targets) as cap:
        ce = model(**inputs).loss
    cosines = cap.cosines

    def no_host_read(*args, **kwargs):
        raise AssertionError("host read inside the loss")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
            patch.setattr(torch.Tensor, name, no_host_read)
        terms = tga_alignment_loss(
            cosines[..., 0], cosines[..., 1], progress=0.5, toxic=~batch["align"], hinge_mask=batch["has_retrieved"]
        )
        trainer._record(ce, terms, batch["align"], cosines[..., 0], ga_scaled=False)
        trainer._record(ce, None, None, None, ga_scaled=False)
    logs = trainer._flush_metrics()
    assert logs["pair"] == pytest.approx(terms.pair.item()) and logs["ce"] == pytest.approx(2 * ce.item())
    # the cosine is the mean over the aligned samples only: the text-only micro-batch does not dilute it
    align = batch["align"].float()
    assert 0 < align.sum() < len(align)  # the batch mixes aligned and not aligned samples
    expected = (cosines[..., 0] * align).sum(dim=1) / align.sum()
    for layer, value in zip(trainer.target_layers, expected.tolist()):
        assert logs[f"cos/layer_{layer}"] == pytest.approx(value, rel=1e-5)
    trainer._record(ce, None, None, None, ga_scaled=False)  # a window without aligned samples logs no cosine
    assert not any(key.startswith("cos/") for key in trainer._flush_metrics())
