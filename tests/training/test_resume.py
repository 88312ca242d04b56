"""Save, kill, resume: a run killed right after its step-2 checkpoint and resumed from it logs the same losses as
the run that was never interrupted (Trainer checkpoints: weights, optimizer, scheduler, RNG and data position).
DeepSpeed ZeRO checkpoints are resumed in test_deepspeed.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import warnings

import pytest

from tests.training.train_helpers import ROOT, base_args, save_tiny_model, step_losses, subprocess_env, write_data

# Trains with a callback that SIGKILLs the process once the step-2 checkpoint is on disk (no cleanup runs).
KILLED_RUN = """
import os, signal, sys
from transformers import TrainerCallback
from tga_fast.training.config import parse_config
from tga_fast.training.train import train

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)

train(*parse_config(sys.argv[1:]), callbacks=[KillAfterSave()])
"""


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*torchvision.*")
        yield


def test_killed_run_resumes_with_the_same_losses(tmp_path):
    from tga_fast.training.train import main

    model, data = save_tiny_model(tmp_path / "model"), write_data(tmp_path / "data")
    options = dict(
        max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=2, target_layers=[1, 2],
        train_llm="true", learning_rate=3e-3, save_full_model="false",
    )  # fmt: skip
    main(base_args(model, data, tmp_path / "straight", **options))
    straight = step_losses(tmp_path / "straight")
    assert sorted(straight) == [1, 2, 3, 4]

    interrupted = tmp_path / "interrupted"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, *base_args(model, data, interrupted, **options)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (interrupted / "checkpoint-2").is_dir() and not (interrupted / "checkpoint-4").exists()
    assert not (interrupted / "log_history.json").exists()  # it never got there

    main(base_args(model, data, interrupted, resume_from_checkpoint="last", **options))
    resumed = step_losses(interrupted)
    assert sorted(resumed) == [1, 2, 3, 4]  # steps 1-2 come back from the checkpoint's trainer state
    for step in (3, 4):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5), (step, resumed, straight)
    # the uninterrupted and the resumed runs differ from a run that restarts from scratch only in what they load
    assert resumed[3] != pytest.approx(straight[1], rel=1e-3)
