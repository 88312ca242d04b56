"""Save, kill, resume: a run killed right after its step-2 checkpoint and resumed from it logs the same losses as
the run that was never interrupted (Trainer checkpoints: weights, optimizer, scheduler, RNG and data position;
the pair and hinge terms at the resumed steps also check t = step / max_steps). The checkpoint loader on its own:
one file, shards, tied weights, a wrong model. DeepSpeed ZeRO checkpoints are resumed in test_deepspeed.py."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

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


@pytest.mark.slow  # a training subprocess killed and resumed
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


def _tiny(tied: bool = False, layers: int = 4):
    """A tiny random LLaVA; ``tied``: a Qwen2 backbone whose lm_head shares the embedding matrix."""
    from transformers import LlavaForConditionalGeneration

    from tga_fast.models.tiny import tiny_vlm

    model, _ = tiny_vlm("llava", "qwen2" if tied else "llama", layers=layers)
    if tied:
        model.config.tie_word_embeddings = model.config.text_config.tie_word_embeddings = True
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(model.config)
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    return model


@pytest.mark.parametrize("layout", ["one_file", "sharded", "tied"])
def test_checkpoint_weights_come_back_under_the_models_names(tmp_path, layout):
    """A checkpoint in save_pretrained's layout (LLaVA keys renamed back) reloads every weight; transformers 5.24's
    own loader matches none of them (the reason for the override)."""
    from tga_fast.training.checkpoints import load_renamed_checkpoint

    trained = _tiny(tied=layout == "tied")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    trained.save_pretrained(tmp_path, max_shard_size="100KB" if layout == "sharded" else "50GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == (layout == "sharded")
    saved = set(load_file(str(next(tmp_path.glob("*.safetensors")))))
    assert not saved & set(trained.state_dict())  # the saved names are not the model's

    model = _tiny(tied=layout == "tied")
    assert load_renamed_checkpoint(model, tmp_path)
    want = trained.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, want[name]), name


def test_checkpoint_of_another_model_is_an_error(tmp_path):
    from tga_fast.training.checkpoints import load_renamed_checkpoint

    _tiny(layers=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not match the model: missing"):
        load_renamed_checkpoint(_tiny(layers=4), tmp_path)
    assert not load_renamed_checkpoint(_tiny(), tmp_path / "no_such_checkpoint")  # nothing here: transformers' path
