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


# ---- error budgets for comparing runs that sum in another order -------------------------------------------------
#
# Two processes (DDP, ZeRO-2/3) reduce each gradient in another order than one process does, and pad their batches
# to other lengths, so every fp32 sum rounds differently. What that can change:
#
# * a logged loss (a forward of the same samples with the same weights at step 1; with weights that differ by the
#   amounts below afterwards): relative error of a few hundred fp32 ulps (u = 2**-24) over the model's reductions
#   (hidden size, vocabulary, tokens, 4 layers): LOSS_RTOL = 2e-5 ~ 340 u. A wrong loss average, a dropped rank or
#   a wrong gradient changes the losses from step 2 on by far more (test_budget_catches_broken_runs).
# * a trained parameter: Adam's step is lr * m_hat / (sqrt(v_hat) + eps), a function of the gradient's direction,
#   not its size. Where an element's gradient is well above the rounding noise of its sum, a relative gradient
#   error rho moves the step by about lr * rho: |dtheta| <= steps * lr * GRADIENT_RHO (rho = 1e-3, generous for
#   fp32 sums of a few thousand terms: n * u = 4096 * 6e-8 = 2.4e-4). Where the gradient is at the rounding noise
#   (a near-exact cancellation between samples), its sign and size are noise and Adam turns them into a full step:
#   such an element can land anywhere within what Adam can move it, 2 * sum_t lr * U_t (U_t: the largest
#   |m_hat / sqrt(v_hat)| at step t; Cauchy-Schwarz over the bias-corrected EMA weights, 1.0 for t = 1, <= 1.003
#   after). Gradients at the noise level are rare: for a smooth distribution of gradient values, the share of
#   elements within rho of zero (relative to their scale) is about rho per step, so at most
#   OUTLIER_FACTOR * steps * rho of the elements (3x margin) may use the wide bound. A wrong gradient (a dropped
#   rank, a wrong average of samples) changes the direction of most elements' gradients and so moves a large
#   share of them by O(lr): it fails the outlier count.

LOSS_RTOL = 2e-5
GRADIENT_RHO = 1e-3
OUTLIER_FACTOR = 3.0


def assert_same_losses(got: dict, want: dict, steps) -> None:
    """The logged values of ``steps`` agree within the fp32 summation-order budget (LOSS_RTOL, see above)."""
    for step in steps:
        assert got[step] == _approx(want[step]), (step, got, want)


def _approx(value):
    import pytest

    return pytest.approx(value, rel=LOSS_RTOL, abs=1e-6)


def adam_step_bound(step: int, betas=(0.9, 0.999)) -> float:
    """The largest |m_hat / sqrt(v_hat)| Adam can take at ``step`` (1-based), whatever the gradients:
    m_hat = sum_i a_i g_i and v_hat = sum_i b_i g_i^2 with the bias-corrected EMA weights, so by Cauchy-Schwarz
    |m_hat| / sqrt(v_hat) <= sqrt(sum_i a_i^2 / b_i) (eps only makes the step smaller)."""
    beta1, beta2 = betas
    total = 0.0
    for i in range(1, step + 1):
        a = (1 - beta1) * beta1 ** (step - i) / (1 - beta1**step)
        b = (1 - beta2) * beta2 ** (step - i) / (1 - beta2**step)
        total += a * a / b
    return total**0.5


def adam_budget(lr: float, steps: int, betas=(0.9, 0.999)) -> tuple[float, float, float]:
    """``(smooth, wide, outlier_share)`` of the parameter budget above for ``steps`` Adam steps at most ``lr``."""
    smooth = steps * lr * GRADIENT_RHO
    wide = 2 * sum(lr * adam_step_bound(t, betas) for t in range(1, steps + 1))
    return smooth, wide, OUTLIER_FACTOR * steps * GRADIENT_RHO


def adam_budget_violations(got: torch.Tensor, want: torch.Tensor, *, lr: float, steps: int) -> list[str]:
    """What of the budget above ``got`` breaks against ``want`` (empty: within it), one message each."""
    smooth, wide, share = adam_budget(lr, steps)
    diff = (got.double() - want.double()).abs().flatten()
    problems = []
    if not torch.isfinite(diff).all():
        problems.append("non-finite values")
        return problems
    allowed = int(share * diff.numel()) + 1  # at least one element may sit at the noise level
    outliers = int((diff > smooth).sum())
    if outliers > allowed:
        problems.append(f"{outliers} of {diff.numel()} elements differ by more than {smooth:.2e} (steps * lr * rho); "
                        f"at most {allowed} may (gradients at the rounding noise)")
    if float(diff.max()) > wide:
        problems.append(f"an element differs by {float(diff.max()):.2e} > {wide:.2e}, more than Adam can move it")
    return problems


def assert_within_adam_budget(got: dict, want: dict, *, lr: float, steps: int) -> None:
    """Every tensor of ``got`` (name -> tensor) within the Adam budget of ``want``'s (see above)."""
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        problems = adam_budget_violations(got[key], value, lr=lr, steps=steps)
        assert not problems, (key, problems)
