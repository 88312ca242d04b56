"""How one ``tga_fast::`` operator is declared: a schema, its reference, fake kernel, autograd and device kernels.

Every op is an :class:`OpSpec` passed once to :func:`define` (in ``kernels/<op>/library.py``). ``define``
registers the pure-PyTorch reference as the ``CompositeExplicitAutograd`` kernel, the default for every
device. Device kernels register onto the same name when their library is present: the C++ extension with
``TORCH_LIBRARY_IMPL(tga_fast, CPU, m)`` when it is imported, Triton for CUDA through
:func:`register_device_kernels`. A backend-specific kernel outranks the reference, so the dispatcher picks by
the tensors' device and user code never branches on it.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from tga_fast.ops import _backends

NAMESPACE = "tga_fast"
# The Library must live as long as the process: its destruction would unregister every op.
_LIBRARY = torch.library.Library(NAMESPACE, "DEF")
# Every defined op by name, in definition order (what `tga-fast env` lists).
DEFINED: dict[str, OpSpec] = {}


@dataclass(frozen=True)
class OpSpec:
    """One operator.

    schema: ``"name(Tensor x, ...) -> Tensor"``, the op's name first.
    reference: the pure-PyTorch implementation, called with the schema's arguments in order.
    fake: shapes and dtypes only, for meta tensors and ``torch.compile``.
    kernel_devices: device types that have a faster kernel; under ``TGA_FAST_STRICT=1`` the reference running
        on one of them is an error naming why that kernel is missing.
    backward, setup_context: the autograd formula (``torch.library.register_autograd``); None: not
        differentiable.
    triton_module: a module with a function named like the op, the CUDA kernel; imported at its first call.
    """

    schema: str
    reference: Callable
    fake: Callable
    kernel_devices: tuple[str, ...] = ("cpu", "cuda")
    backward: Callable | None = None
    setup_context: Callable | None = None
    triton_module: str | None = None

    @property
    def name(self) -> str:
        return self.schema.split("(", 1)[0]

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"


def _device_of(args: tuple) -> torch.device:
    return next(arg.device for arg in args if isinstance(arg, torch.Tensor))


def _reference_kernel(spec: OpSpec) -> Callable:
    """The reference as the default kernel: checks first whether strict mode forbids falling back to it."""

    def kernel(*args):
        _backends.check_fallback(spec.name, _device_of(args), spec.kernel_devices)
        return spec.reference(*args)

    kernel.__name__ = f"{spec.name}_reference"
    return kernel


def define(spec: OpSpec) -> OpSpec:
    """Defines ``tga_fast::<spec.name>`` with its reference kernel, fake kernel and autograd formula."""
    _LIBRARY.define(spec.schema)
    _LIBRARY.impl(spec.name, _reference_kernel(spec), "CompositeExplicitAutograd")
    torch.library.register_fake(spec.qualname, spec.fake, lib=_LIBRARY)
    if spec.backward is not None:
        torch.library.register_autograd(spec.qualname, spec.backward, setup_context=spec.setup_context, lib=_LIBRARY)
    DEFINED[spec.name] = spec
    return spec


def _triton_kernel(spec: OpSpec) -> Callable:
    """A CUDA kernel that imports its Triton module on the first call; if that fails it warns once and
    serves the reference (or raises under TGA_FAST_STRICT=1)."""
    state: dict[str, Callable] = {}

    def kernel(*args):
        if "fn" not in state:
            try:
                state["fn"] = getattr(importlib.import_module(spec.triton_module), spec.name)
            except Exception as error:  # an import error of triton or a driver error, reported once
                status = _backends.STATUS["cuda"]
                status.available, status.reason = False, f"importing {spec.triton_module} failed: {error!r}"
                _backends.check_fallback(spec.name, torch.device("cuda"))
                warnings.warn(f"{spec.qualname}: {status.reason}; using the PyTorch reference", stacklevel=2)
                state["fn"] = spec.reference
        return state["fn"](*args)

    return kernel


def register_device_kernels(status: dict[str, _backends.BackendStatus]) -> None:
    """Registers the Triton kernel of every defined op that has one, when the CUDA backend is available.
    (The C++ kernels register themselves: importing ``tga_fast._C``, in ``_backends.load``, is enough.)"""
    if not status["cuda"].available:
        return
    for spec in DEFINED.values():
        if spec.triton_module is not None:
            _LIBRARY.impl(spec.name, _triton_kernel(spec), "CUDA")
