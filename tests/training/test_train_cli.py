"""``tga-fast train`` and the launchers' entry on user errors (one stderr line, exit code 2), the output_dir guard
(another run's checkpoints are refused unless resuming or --overwrite_output_dir), resume that skips incomplete
checkpoints, and a stage whose image records were all skipped."""

from __future__ import annotations

import json
import logging

import pytest

from tests.training.train_helpers import base_args, step_losses
from tga_fast.cli import main as cli_main

SHORT = dict(max_steps=2, per_device_train_batch_size=2, target_layers=[1, 2], save_full_model="false")


def run_cli(capsys, args) -> tuple[int, list[str]]:
    code = cli_main(["train", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tga-fast train: error")]
    return code, err


@pytest.mark.parametrize("case", ["preset", "field", "data", "model", "image_folder", "resume_folder"])
def test_user_errors_are_one_line_and_exit_2(files, tmp_path, capsys, case):
    model, data = files
    args = base_args(model, data, tmp_path / "out", **SHORT)
    expected = {
        "preset": (["no_such_preset.json", *args], "config file not found: no_such_preset.json"),
        "field": ([*args, "--pair_weight", "-1"], "TGAConfig.pair_weight must be a number >= 0"),
        "data": ([*args, "--data_path", str(tmp_path / "none.jsonl")], "DataConfig.data_path is not a file"),
        "model": ([*args, "--model_name_or_path", "org/no-such-model"], "model folder org/no-such-model does not exist"),
        "image_folder": ([*args, "--image_folder", str(tmp_path / "none")], "DataConfig.image_folder is not a folder"),
        "resume_folder": ([*args, "--resume_from_checkpoint", str(tmp_path)], "is not a complete checkpoint"),
    }[case]
    code, err = run_cli(capsys, expected[0])
    assert code == 2 and len(err) == 1 and expected[1] in err[0], err


def test_launcher_entry_prints_one_line_and_exits_2(files, tmp_path, capsys):
    from tga_fast.training.train import launch

    model, data = files
    assert launch(base_args(model, data, tmp_path / "out", **SHORT, pair_weight=-1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tga_fast.training.train: error: TGAConfig.pair_weight") and "Traceback" not in err


def test_output_dir_of_another_run_is_refused_or_overwritten(files, tmp_path, capsys):
    from tga_fast.training.train import main

    model, data = files
    out = tmp_path / "out"
    main(base_args(model, data, out, **SHORT, save_strategy="steps", save_steps=1))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    code, err = run_cli(capsys, base_args(model, data, out, **dict(SHORT, max_steps=1), save_strategy="steps", save_steps=1))
    assert code == 2 and str(out) in err[0] and "--resume_from_checkpoint last" in err[0] and "--overwrite_output_dir" in err[0]
    assert (out / "checkpoint-2").is_dir()  # nothing was touched

    # with --overwrite_output_dir the old checkpoints go first: a later resume cannot pick up the other run's step 2
    code, _ = run_cli(capsys, base_args(model, data, out, **dict(SHORT, max_steps=1), save_strategy="steps", save_steps=1,
                                        overwrite_output_dir="true"))
    assert code == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert sorted(step_losses(out)) == [1]


def test_resume_last_skips_an_incomplete_newest_checkpoint(files, tmp_path, caplog):
    from tga_fast.training.train import main

    model, data = files
    out = tmp_path / "out"
    main(base_args(model, data, out, **dict(SHORT, max_steps=3), save_strategy="steps", save_steps=1))
    # a run killed while writing checkpoint-3: its trainer_state.json (written last) never came
    (out / "checkpoint-3" / "trainer_state.json").unlink()
    # and checkpoint-2's weights cut short
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="tga_fast.training.checkpoints"):
        metrics = main(base_args(model, data, out, **dict(SHORT, max_steps=3), save_strategy="no",
                                 resume_from_checkpoint="last"))
    assert metrics["resumed_from"] == str(out / "checkpoint-1")
    skipped = [r.getMessage() for r in caplog.records if "skipping incomplete checkpoint" in r.getMessage()]
    assert len(skipped) == 2 and "trainer_state.json" in skipped[0] and "model.safetensors" in skipped[1]


def test_checkpoint_problems(tmp_path):
    from safetensors.torch import save_file
    import torch

    from tga_fast.training.checkpoints import checkpoint_problems, last_complete_checkpoint

    def make(step, **broken):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
        (folder / "optimizer.pt").write_bytes(b"x")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": broken.get("state_step", step)}))
        if broken.get("no_optimizer"):
            (folder / "optimizer.pt").unlink()
        if broken.get("half_state"):
            (folder / "trainer_state.json").write_text('{"global_st')
        return folder

    assert checkpoint_problems(make(1)) == []
    assert "optimizer" in checkpoint_problems(make(2, no_optimizer=True))[0]
    assert "unreadable or cut short" in checkpoint_problems(make(3, half_state=True))[0]
    assert "says step 7" in checkpoint_problems(make(4, state_step=7))[0]
    sharded = make(5)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model-00002-of-00002.safetensors is missing" in checkpoint_problems(sharded)[0]
    last, skipped = last_complete_checkpoint(tmp_path)
    assert last == tmp_path / "checkpoint-1" and [p.name for p, _ in skipped] == [f"checkpoint-{n}" for n in (5, 4, 3, 2)]


def test_no_surviving_image_record_is_an_error(files, tmp_path, capsys):
    """A wrong --image_folder used to skip every image record and export the initial projector with exit 0."""
    model, data = files
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(capsys, base_args(model, data, tmp_path / "out", **SHORT, image_folder=empty))
    assert code == 2 and "no image record" in err[0] and "skipped" in err[0] and "image file not found" in err[0], err
    assert not (tmp_path / "out" / "projector.safetensors").exists()
