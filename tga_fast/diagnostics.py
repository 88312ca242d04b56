"""What is installed and which kernel serves each op on each device (``tga-fast env``)."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform

import torch

from tga_fast._settings import SETTINGS
from tga_fast.ops import _library
from tga_fast.ops._backends import STATUS

PACKAGES = ("torch", "triton", "transformers", "deepspeed", "bitsandbytes", "faiss-cpu", "faiss-gpu", "numpy")
DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def serving_implementation(op: str, device: str) -> str:
    """The implementation the dispatcher runs for ``tga_fast::op`` on tensors of ``device``."""
    key = DISPATCH_KEYS[device]
    if torch._C._dispatch_has_kernel_for_dispatch_key(f"{_library.NAMESPACE}::{op}", key):
        return STATUS[device].name
    return "reference"


def cpp_build_info() -> dict[str, str]:
    if not STATUS["cpu"].available:
        return {}
    return dict(importlib.import_module("tga_fast._C").build_info())


def report() -> str:
    """A human-readable report of versions, settings, backends and per-op dispatch."""
    import tga_fast

    lines = [
        f"tga_fast {tga_fast.__version__}  python {platform.python_version()}  {platform.machine()}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()),
        f"cuda available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""),
        f"settings: TGA_FAST_BACKEND={SETTINGS.backend} TGA_FAST_STRICT={int(SETTINGS.strict)}",
        "backends:",
    ]
    for device, status in STATUS.items():
        state = "available" if status.available else "missing"
        lines.append(f"  {device:5s} {status.name:7s} {state}" + (f": {status.reason}" if status.reason else ""))
    for key, value in cpp_build_info().items():
        lines.append(f"  cpp build  {key}: {value}")
    lines.append("dispatch (op: cpu / cuda):")
    for op in _library.OPS:
        lines.append(f"  {op:28s} {serving_implementation(op, 'cpu'):9s} / {serving_implementation(op, 'cuda')}")
    lines += model_family_lines()
    return "\n".join(lines)


def model_family_lines() -> list[str]:
    """``model families (config.model_type):`` and one line per supported family: what runs on it, and any
    note (a processor stand-in, an attention mask kept by knockout)."""
    from tga_fast.models.adapters import ARCHITECTURES

    lines = ["model families (config.model_type):"]
    width = max(map(len, ARCHITECTURES))  # one column of descriptions, however long a family's name
    for model_type in sorted(ARCHITECTURES):
        arch = ARCHITECTURES[model_type]
        if not arch.vision_tower:
            lines.append(f"  {model_type:{width}s} text LLM: capture, knockout, steer, skip_layers, attention_shares, "
                         "lens (the text side of the analyses; a base LLM for build-lvlm)")
            continue
        notes = []
        if arch.text_backbones:
            notes.append("backbones " + "/".join(arch.text_backbones))
        if arch.attention_mask != "causal":
            notes.append(f"own {arch.attention_mask} mask kept by knockout")
        if arch.image_runs == "hull":
            notes.append("image span = first to last image token")
        inputs = arch.token_inputs + arch.image_inputs
        if inputs:
            notes.append("inputs " + ", ".join(inputs))
        lines.append(f"  {model_type:{width}s} {arch.works}" + (f" [{'; '.join(notes)}]" if notes else ""))
    return lines
