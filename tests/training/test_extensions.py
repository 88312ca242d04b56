"""What the miniature world needs from TGATrainer: target layer 0 (with a warning), a text-replay mix, and a
per-record hinge opt-out passed through the collator to the loss. Plus image paths that stay in their folder."""

from __future__ import annotations

import json
import logging

import pytest

from tests.training.make_data import write_llava_data
from tests.training.test_trainer import make_trainer
from tests.training.train_helpers import base_args
from tga_fast.models import resolve
from tga_fast.training.config import TGAConfig


def test_target_layer_zero_trains_the_projector_with_a_warning(files, tmp_path, caplog):
    """Layer 0 is the decoder's input: the projector output among the embeddings (an input-level alignment)."""
    tga = TGAConfig(target_layers=[0, 1])
    with caplog.at_level(logging.WARNING, logger="tga_fast.training.trainer"):
        trainer, batch = make_trainer(files, tmp_path, tga=tga, train_llm=False, max_steps=1)
    assert any("input-level alignment" in r.getMessage() for r in caplog.records)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    projector = resolve(trainer.model).projector
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    trainer.train()
    assert any("cos/layer_0" in entry for entry in trainer.state.log_history)


def _write_hinge_opt_out(folder):
    """The test data with ``"hinge": false`` on the first image record that keeps a retrieved text."""
    path = write_llava_data(folder, count=8, bad_records=False)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    opted = next(r for r in records if r.get("retrieved") and r["retrieved"].lower().rstrip(".") != r["caption"])
    opted["hinge"] = False
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path, opted["id"]


def test_hinge_opt_out_reaches_the_loss(files, tmp_path, monkeypatch):
    from tga_fast.training import trainer as trainer_module
    from tga_fast.training.collator import TGACollator
    from tga_fast.training.data import TGADataset

    path, opted = _write_hinge_opt_out(tmp_path / "data")
    from transformers import AutoProcessor

    trainer, _ = make_trainer(files, tmp_path, max_steps=1)
    processor = AutoProcessor.from_pretrained(files[0])
    dataset = TGADataset(path, processor, progress=False)
    images = [i for i, r in enumerate(dataset.records) if r.image is not None]
    batch = TGACollator(processor)([dataset[i] for i in images])
    keys = [dataset.records[i].key for i in images]
    want = [dataset.records[i].retrieved is not None and key != opted for i, key in zip(images, keys)]
    assert batch["hinge_mask"].tolist() == want and batch["has_retrieved"][keys.index(opted)]

    seen = {}
    original = trainer_module.tga_alignment_loss

    def spy(*args, **kwargs):
        seen["hinge_mask"] = kwargs["hinge_mask"].clone()
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "tga_alignment_loss", spy)
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    assert seen["hinge_mask"].tolist() == want


def test_hinge_field_must_be_a_bool(tmp_path):
    from tga_fast.training.data import BadRecord, parse_record

    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "hinge": "no"}
    with pytest.raises(BadRecord, match="'hinge' must be true or false"):
        parse_record(record, "line 1", tmp_path)


@pytest.mark.parametrize("image", ["../outside.png", "/etc/hostname", "images/../../outside.png"])
def test_image_paths_stay_inside_the_image_folder(tmp_path, image):
    from tga_fast.training.data import BadRecord, parse_record

    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"x")
    record = {"image": image, "caption": "c", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                {"from": "gpt", "value": "a"}]}
    with pytest.raises(BadRecord, match="lies outside"):
        parse_record(record, "line 1", folder)


def _write_replay(folder, count=3, with_image=True):
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"id": f"replay-{i}", "conversations": [{"from": "human", "value": f"say {i}"},
                                                       {"from": "gpt", "value": f"{i}."}]} for i in range(count)]
    if with_image:
        (folder / "x.png").write_bytes(b"x")  # exists: the record is refused for having an image, not for a missing one
        records.append({"id": "replay-image", "image": "x.png", "caption": "c",
                        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]})
    path = folder / "replay.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_text_replay_mix(files, tmp_path):
    from tga_fast.errors import UserError
    from tga_fast.training.data import TGADataset
    from tga_fast.training.replay import mix_text_replay, replay_count
    from tga_fast.training.sampler import ModalityGroupedSampler

    model, data = files
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    replay = _write_replay(tmp_path / "replay", count=3)
    dataset = TGADataset(data, processor, progress=False)
    main_count = len(dataset)
    added = mix_text_replay(dataset, replay, ratio=0.5, seed=0)
    assert added == replay_count(main_count, 3, 0.5) == main_count  # half of all samples: as many as the main data
    assert len(dataset) == 2 * main_count
    assert all(r.image is None and r.key.startswith("replay-") for r in dataset.records[main_count:])
    assert any(key.endswith("replay-image") and "text-only" in reason for key, reason in dataset.skipped)
    assert dataset[len(dataset) - 1].labels.ne(-100).any()  # encoded like any text-only sample: LM loss only
    # the sampler keeps every step one modality, replay included
    sampler = ModalityGroupedSampler([r.image is not None for r in dataset.records], group_size=2)
    order = list(sampler)
    for start in range(0, len(order), 2):
        assert len({dataset.records[i].image is None for i in order[start : start + 2]}) == 1
    assert replay_count(10, 3, None) == 3 and replay_count(10, 3, 0.0) == 0
    with pytest.raises(UserError, match="no text-only record"):
        mix_text_replay(TGADataset(data, processor, progress=False), _write_replay(tmp_path / "r2", 0), 0.5)


def test_text_replay_in_a_training_run(files, tmp_path):
    from tga_fast.training.train import main

    model, data = files
    replay = _write_replay(tmp_path / "replay", count=4, with_image=False)
    metrics = main(base_args(model, data, tmp_path / "out", max_steps=2, per_device_train_batch_size=2,
                             target_layers=[1], save_full_model="false", text_replay_path=replay,
                             text_replay_ratio=0.25))
    assert metrics["text_replay_samples"] == round(0.25 / 0.75 * 8)
