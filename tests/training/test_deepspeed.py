"""DeepSpeed ZeRO-2 and ZeRO-3, and plain DDP, with two CPU processes (gloo) under torchrun, against one process on
the same data.

Two processes with batch 2 each see, step by step, the batches one process with batch 4 sees (the Trainer shards
each global batch), so the logged losses must agree. ZeRO-3 also checkpoints at step 2, exports the projector
(gathered from its partitions) and resumes from the ZeRO checkpoint: the resumed step 3 equals the uninterrupted
one. Kept lean for a 2-core CI: a 4-layer LLaVA, 3 steps, five launches.

The comparisons use the error budgets of ``train_helpers`` (losses: fp32 summation order; parameters: what Adam
makes of a gradient at the rounding noise), and ``test_budget_catches_broken_runs`` shows that the parameter
budget still fails a wrong gradient and the loss budget a wrong loss average.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings

import pytest
import torch

from tests.training.train_helpers import (
    ROOT,
    adam_budget_violations,
    assert_same_losses,
    assert_within_adam_budget,
    base_args,
    free_port,
    save_tiny_model,
    step_losses,
    subprocess_env,
    write_data,
)

# slow: two-process DeepSpeed/DDP runs (10-25 s each).
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed"),
]

# The shared-memory op DeepSpeed compiles at init on a CPU (about 30 s) is not needed with gloo.
ENTRY = """
import importlib, sys
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
from tga_fast.training.train import main
main(sys.argv[1:])
"""
OPTIONS = dict(max_steps=3, target_layers=[1, 2], train_llm="true", learning_rate=3e-3, save_full_model="false")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The model, the data, and the single-process run everything is compared with."""
    from tga_fast.training.train import main

    root = tmp_path_factory.mktemp("deepspeed")
    model, data = save_tiny_model(root / "model"), write_data(root / "data")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        main(base_args(model, data, root / "single", per_device_train_batch_size=4, **OPTIONS))
    entry = root / "entry.py"
    entry.write_text(ENTRY)
    return root, model, data, entry


def launch(entry, args, processes=2):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(entry), *args,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    noise = ("Warning", "return func", "warnings.warn")
    log = "\n".join(line for line in (result.stdout + result.stderr).splitlines() if not any(n in line for n in noise))
    assert result.returncode == 0, log[-3000:] + "\n...\n" + "\n".join(l for l in log.splitlines() if "rank1" in l or "terminate" in l or "what()" in l)[-3000:]
    return result


def test_zero2_two_processes_match_one(setup):
    root, model, data, entry = setup
    out = root / "zero2"
    deepspeed = str(ROOT / "configs" / "deepspeed" / "zero2.json")
    launch(entry, base_args(model, data, out, per_device_train_batch_size=2, deepspeed=deepspeed, **OPTIONS))
    assert_same_losses(step_losses(out), step_losses(root / "single"), [1, 2, 3])
    # the TGA metrics gathered over the two processes are the single process's (cosines: over all aligned samples)
    for key in ("ce", "pair", "hinge", "cos/layer_2"):
        got, want = step_losses(out, key), step_losses(root / "single", key)
        assert sorted(got) == sorted(want) and want, key
        assert_same_losses(got, want, sorted(want))


@pytest.mark.parametrize("find_unused", ["default", "true"])
def test_ddp_two_processes_match_one(setup, find_unused):
    """torchrun without DeepSpeed (DDP over gloo): the teacher pass (a second, no-grad forward through the DDP
    wrapper, ended early) and the text-only steps keep the ranks in step. By default (find_unused_parameters False)
    the projector gets the same zero gradient on a text-only step as in one process, so every loss matches; with
    find_unused_parameters=True DDP leaves its gradient None there (AdamW then skips it), so only the steps up to
    the first text-only one (step 2 here) match, and the run must not fail."""
    root, model, data, entry = setup
    out = root / f"ddp-{find_unused}"
    extra = {} if find_unused == "default" else {"ddp_find_unused_parameters": "true"}
    launch(entry, base_args(model, data, out, per_device_train_batch_size=2, **extra, **OPTIONS))
    assert_same_losses(step_losses(out), step_losses(root / "single"), [1, 2, 3] if find_unused == "default" else [1, 2])


def test_zero3_two_processes_match_one_export_and_resume(setup):
    from safetensors.torch import load_file

    root, model, data, entry = setup
    out = root / "zero3"
    deepspeed = str(ROOT / "configs" / "deepspeed" / "zero3.json")
    options = dict(OPTIONS, per_device_train_batch_size=2, deepspeed=deepspeed, save_strategy="steps", save_steps=2)
    launch(entry, base_args(model, data, out, **options))
    single = step_losses(root / "single")
    straight = step_losses(out)
    assert_same_losses(straight, single, [1, 2, 3])

    # the projector gathered from the ZeRO-3 partitions is the one the single process trained, within what Adam
    # makes of the other summation order (an element whose gradient cancels to rounding noise moves by O(lr))
    exported = load_file(str(out / "projector.safetensors"))
    reference = load_file(str(root / "single" / "projector.safetensors"))
    assert_within_adam_budget(exported, reference, lr=OPTIONS["learning_rate"], steps=OPTIONS["max_steps"])

    # resume from the ZeRO checkpoint of step 2 (weights, optimizer partitions, scheduler, data position)
    assert (out / "checkpoint-2").is_dir() and any((out / "checkpoint-2").glob("global_step2"))
    resumed = root / "zero3-resumed"
    launch(entry, base_args(model, data, resumed, resume_from_checkpoint=str(out / "checkpoint-2"), **options))
    assert_same_losses(step_losses(resumed), straight, [3])


def _adam_run(gradients, steps=3, lr=3e-3):
    """AdamW (the Trainer's optimizer, weight decay 0) from zeros over the given per-step gradients."""
    theta = torch.zeros_like(gradients[0], requires_grad=True)
    optimizer = torch.optim.AdamW([theta], lr=lr, weight_decay=0.0)
    for grad in gradients[:steps]:
        theta.grad = grad.clone()
        optimizer.step()
    return theta.detach()


def test_budget_catches_broken_runs():
    """The budgets used above pass a correct two-rank reduction and fail broken ones.

    Per-sample gradients of 4 samples over 4096 elements and 3 steps, where a few elements cancel exactly between
    the samples (their true gradient is 0, so what reaches Adam is rounding noise). One process averages the 4;
    two ranks average 2 each and then the two means (the all-reduce): a different rounding. A dropped rank (rank 1
    never contributes) and a wrong loss average must fail."""
    generator = torch.Generator().manual_seed(0)
    lr, steps, elements, cancelling = 3e-3, 3, 4096, 4
    one, two, dropped = [], [], []
    for _ in range(steps):
        samples = torch.randn(4, elements, generator=generator) * torch.logspace(-3, 0, elements)
        samples[:, :cancelling] *= 100  # large terms: their rounding noise (~1e-5) is far above Adam's eps 1e-8
        samples[3, :cancelling] = -(samples[0, :cancelling] + samples[1, :cancelling] + samples[2, :cancelling])
        one.append(samples.mean(dim=0))
        ranks = (samples[:2].mean(dim=0), samples[2:].mean(dim=0))
        two.append((ranks[0] + ranks[1]) / 2)
        dropped.append(ranks[0])
    reference = _adam_run(one, steps, lr)
    assert not adam_budget_violations(_adam_run(two, steps, lr), reference, lr=lr, steps=steps)
    # the fixed tolerance this budget replaces fails the correct reduction: Adam amplified the rounding noise
    assert not torch.allclose(_adam_run(two, steps, lr), reference, rtol=1e-4, atol=1e-5)
    assert adam_budget_violations(_adam_run(dropped, steps, lr), reference, lr=lr, steps=steps)
    # Adam does not see the scale of a gradient (a loss averaged wrongly by a constant trains the same weights);
    # the logged loss does, and its budget catches 1%
    losses = {1: 2.5, 2: 2.1, 3: 1.8}
    with pytest.raises(AssertionError):
        assert_same_losses({k: v * 1.01 for k, v in losses.items()}, losses, [1, 2, 3])
    assert_same_losses({k: v * (1 + 1e-6) for k, v in losses.items()}, losses, [1, 2, 3])
