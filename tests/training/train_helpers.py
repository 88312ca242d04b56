"""Shared pieces of the training tests: a saved tiny LLaVA, its data, Trainer arguments and logged losses."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch

from tests.helpers import save_tiny_llava
from tests.training.make_data import write_llava_data

ROOT = Path(__file__).resolve().parents[2]
# Indices of write_llava_data(count=8) records with an image: variants 0, 1 (self-match), 2 (no retrieved), 3.
IMAGE_SAMPLES = (0, 1, 2, 5)


def save_tiny_model(folder: Path) -> Path:
    """A random 4-layer LLaVA (Llama backbone) with its processor, saved as a local HF folder."""
    return save_tiny_llava(folder, layers=4)


def write_data(folder: Path, count: int = 8) -> Path:
    return write_llava_data(folder, count=count, bad_records=False)


def base_args(model: Path, data: Path, out: Path, **overrides) -> list[str]:
    """Command-line options of a short CPU run: batch 4, lr 1e-3, a log line per step, no checkpoints."""
    options = {
        "model_name_or_path": model, "data_path": data, "output_dir": out, "max_steps": 3,
        "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1, "use_cpu": "true",
        "report_to": "none", "save_strategy": "no", "disable_tqdm": "true", "seed": 0,
    }  # fmt: skip
    options.update(overrides)
    args = []
    for key, value in options.items():
        if isinstance(value, (list, tuple)):
            args += [f"--{key}", *map(str, value)]
        else:
            args += [f"--{key}", str(value)]
    return args


def step_losses(output_dir: Path, key: str = "loss") -> dict[int, float]:
    """``{step: logged value}`` of ``key`` (the loss, or ``ce``, ``pair``, ``cos/layer_2``, ...) from the run's
    ``log_history.json``."""
    history = json.loads((Path(output_dir) / "log_history.json").read_text())
    return {entry["step"]: entry[key] for entry in history if key in entry}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """One thread per process, DeepSpeed on the CPU, the repository importable (tests.*)."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", TRITON_INTERPRET="1", TGA_FAST_STRICT="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),  # one ninja: the venv's
    )  # fmt: skip
    return env


def grads_of(module: torch.nn.Module) -> torch.Tensor:
    """All parameter gradients of ``module`` flattened (zeros where None)."""
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in module.parameters()
    ])  # fmt: skip
