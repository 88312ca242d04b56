"""Which kernels serve which device, and why a kernel is missing.

The C++ extension (``tga_fast._C``) registers CPU kernels when it is imported; the Triton kernels register
for CUDA at import of ``tga_fast`` but import Triton itself only on their first call, so ``import tga_fast``
stays fast and never touches a GPU. Nothing here raises: a missing backend is recorded with its reason,
reported by ``tga-fast env`` and, under ``TGA_FAST_STRICT=1``, raised at the first call that would fall back.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

import torch

from tga_fast._settings import SETTINGS


@dataclass
class BackendStatus:
    """One kernel family: ``name`` serves tensors of ``device`` when ``available``; else ``reason`` says why not."""

    name: str
    device: str
    available: bool
    reason: str = ""


STATUS: dict[str, BackendStatus] = {}


def _load_cpp() -> BackendStatus:
    if SETTINGS.backend == "reference":
        return BackendStatus("cpp", "cpu", False, "disabled by TGA_FAST_BACKEND=reference")
    try:
        importlib.import_module("tga_fast._C")
    except ImportError as error:
        return BackendStatus(
            "cpp",
            "cpu",
            False,
            f"the C++ extension tga_fast._C is not importable ({error}); rebuild with "
            "`pip install --no-build-isolation -e .` without TGA_FAST_SKIP_CPP_BUILD",
        )
    return BackendStatus("cpp", "cpu", True)


def _find_triton() -> BackendStatus:
    if SETTINGS.backend == "reference":
        return BackendStatus("triton", "cuda", False, "disabled by TGA_FAST_BACKEND=reference")
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return BackendStatus("triton", "cuda", False, f"this torch ({torch.__version__}) is built without CUDA")
    if importlib.util.find_spec("triton") is None:
        return BackendStatus("triton", "cuda", False, "triton is not installed (pip install 'tga_fast[triton]')")
    return BackendStatus("triton", "cuda", True, "registered; triton is imported at the first call")


def load() -> dict[str, BackendStatus]:
    """Loads the backends once; returns ``{device: status}``."""
    if not STATUS:
        for status in (_load_cpp(), _find_triton()):
            STATUS[status.device] = status
    return STATUS


def check_fallback(op: str, device: torch.device, kernel_devices: tuple[str, ...] = ("cpu", "cuda")) -> None:
    """Called by every reference kernel. Under strict mode, reaching the reference on a device for which
    ``op`` has a kernel (``kernel_devices``) raises with the reason that kernel is missing."""
    if not SETTINGS.strict or SETTINGS.backend == "reference" or device.type not in kernel_devices:
        return
    status = STATUS.get(device.type)
    if status is not None:
        raise RuntimeError(
            f"TGA_FAST_STRICT=1: tga_fast::{op} on {device.type} fell back to the PyTorch reference "
            f"because the {status.name} kernel is unavailable: {status.reason or 'not registered for this input'}"
        )
