"""Process-wide settings read once from the environment.

``TGA_FAST_BACKEND``  ``auto`` (default): the fastest implementation registered for each device;
                      ``reference``: only the pure-PyTorch reference (no C++ or Triton kernel is loaded).
``TGA_FAST_STRICT``   yes/no (default no): a tensor that reaches the reference on a device for which a
                      kernel is expected (CPU: the C++ extension; CUDA: Triton) raises instead of falling back.

These are read once, here, at first import; change them by restarting the process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TRUE = frozenset({"1", "true", "yes", "y", "on", "t"})
_FALSE = frozenset({"0", "false", "no", "n", "off", "f", ""})
BACKENDS = ("auto", "reference")


def parse_bool(value: str | None, *, name: str = "value", default: bool = False) -> bool:
    """Lenient yes/no parser: 1/true/yes/y/on and 0/false/no/n/off/'' in any case and spacing."""
    if value is None:
        return default
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not a yes/no value; use one of 1/0, true/false, yes/no, on/off")


@dataclass(frozen=True)
class Settings:
    backend: str
    strict: bool


def _read() -> Settings:
    backend = os.environ.get("TGA_FAST_BACKEND", "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"TGA_FAST_BACKEND={backend!r} is not one of {BACKENDS}")
    strict = parse_bool(os.environ.get("TGA_FAST_STRICT"), name="TGA_FAST_STRICT")
    return Settings(backend=backend, strict=strict)


SETTINGS = _read()
