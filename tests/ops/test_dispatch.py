"""Which implementation the dispatcher runs, TGA_FAST_BACKEND, TGA_FAST_STRICT, and `tga-fast env`.

Settings are read once per process, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tga_fast._settings import parse_bool
from tga_fast.ops import BACKENDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPP_EXPECTED = not parse_bool(os.environ.get("TGA_FAST_SKIP_CPP_BUILD"))


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TGA_FAST_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=environment, capture_output=True, text=True
    )


def test_cpp_extension_is_built():
    """A CI run without the C++ kernels must fail here rather than skip every C++ test."""
    if not CPP_EXPECTED:
        pytest.skip("TGA_FAST_SKIP_CPP_BUILD is set")
    assert BACKENDS["cpu"].available, BACKENDS["cpu"].reason


@pytest.mark.skipif(not CPP_EXPECTED, reason="TGA_FAST_SKIP_CPP_BUILD is set")
def test_cpu_tensors_reach_the_cpp_kernel():
    for op in ("segment_pool", "segment_pool_backward", "segment_cosine"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tga_fast::{op}", "CPU"), op


PROBE = """
import torch, tga_fast
from tga_fast.diagnostics import serving_implementation
hidden = torch.randn(2, 5, 3, requires_grad=True)
spans = torch.tensor([[[0, 2], [1, 5]], [[4, 5], [0, 0]]])
cos = tga_fast.segment_cosine(hidden, spans, torch.randn(2, 3))
cos.sum().backward()
print(serving_implementation("segment_cosine", "cpu"), serving_implementation("segment_pool_backward", "cpu"))
"""


@pytest.mark.slow  # fresh interpreters
def test_backend_reference_forces_the_reference():
    result = run_python(PROBE, TGA_FAST_BACKEND="reference", TGA_FAST_STRICT="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["reference", "reference"]


@pytest.mark.slow  # fresh interpreters
@pytest.mark.skipif(not CPP_EXPECTED, reason="TGA_FAST_SKIP_CPP_BUILD is set")
def test_default_backend_serves_cpp():
    result = run_python(PROBE, TGA_FAST_STRICT="yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["cpp", "cpp"]


MISSING_EXTENSION = "import sys; sys.modules['tga_fast._C'] = None\n"  # makes `import tga_fast._C` fail


@pytest.mark.slow  # fresh interpreters
def test_strict_turns_a_fallback_into_an_error():
    result = run_python(MISSING_EXTENSION + PROBE, TGA_FAST_STRICT="on")
    assert result.returncode != 0
    assert "TGA_FAST_STRICT=1" in result.stderr and "tga_fast::segment_cosine" in result.stderr
    assert "tga_fast._C" in result.stderr  # the reason names what is missing


@pytest.mark.slow  # fresh interpreters
def test_without_strict_a_missing_extension_falls_back_silently():
    result = run_python(MISSING_EXTENSION + PROBE, TGA_FAST_STRICT="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["reference", "reference"]


@pytest.mark.slow  # fresh interpreters
def test_bad_setting_names_the_variable():
    result = run_python("import tga_fast", TGA_FAST_STRICT="maybe")
    assert result.returncode != 0 and "TGA_FAST_STRICT='maybe'" in result.stderr
    result = run_python("import tga_fast", TGA_FAST_BACKEND="cuda-graphs")
    assert result.returncode != 0 and "TGA_FAST_BACKEND" in result.stderr


@pytest.mark.parametrize("text, expected", [("1", True), (" Yes ", True), ("on", True), ("0", False), ("", False), ("OFF", False)])
def test_parse_bool_is_lenient(text, expected):
    assert parse_bool(text) is expected


@pytest.mark.slow  # fresh interpreters
def test_reference_mode_passes_opcheck():
    code = """
    import torch, tga_fast
    hidden = torch.randn(2, 6, 5, requires_grad=True)
    spans = torch.tensor([[[0, 2], [1, 6]], [[5, 6], [0, 0]]])
    target = torch.randn(2, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.tga_fast.segment_pool.default, (hidden, spans))
    torch.library.opcheck(torch.ops.tga_fast.segment_cosine.default, (hidden, spans, target, 1e-8))
    torch.library.opcheck(torch.ops.tga_fast.segment_pool_backward.default, (torch.randn(2, 2, 5), spans, 6, torch.float32))
    print("ok")
    """
    result = run_python(code, TGA_FAST_BACKEND="reference")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize("command", [["-m", "tga_fast", "env"], ["-m", "tga_fast.cli", "env"]])
def test_env_command_reports_dispatch(command):
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for needle in ("torch", "TGA_FAST_BACKEND", "segment_cosine", "segment_pool_backward", "cpu", "cuda"):
        assert needle in result.stdout
    if CPP_EXPECTED:
        assert "cpu   cpp     available" in result.stdout


@pytest.mark.slow  # fresh interpreters
def test_triton_kernels_register_for_cuda_where_a_triton_module_exists():
    """With the CUDA backend reported available, every op with a Triton kernel gets a CUDA registration, the
    reference-only backwards none (checked in a fresh process: registration is global)."""
    code = """
    import torch
    from tga_fast.ops import _backends, _library, _registration
    if not _backends.STATUS["cuda"].available:  # else the import registered them already
        _registration.register_device_kernels({"cuda": _backends.BackendStatus("triton", "cuda", True)})
    print(" ".join(op for op in _library.OPS if torch._C._dispatch_has_kernel_for_dispatch_key(f"tga_fast::{op}", "CUDA")))
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "segment_pool", "segment_pool_backward", "segment_cosine", "knockout_attention", "attention_share"
    ]
