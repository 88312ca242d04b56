"""The ``tga_fast::`` operators, defined once each, then the device kernels registered onto them.

Each op is declared in ``kernels/<op>/library.py`` as one :class:`~tga_fast.ops._registration.OpSpec`
(schema, reference, fake kernel, autograd, Triton module) passed to ``define``; importing those modules
defines the ops. Then the backends load: importing the C++ extension registers its CPU kernels, and the
Triton kernels are registered for CUDA when Triton can run (see ``_registration`` and ``_backends``).
"""

from __future__ import annotations

from tga_fast.ops import _backends
from tga_fast.ops._registration import DEFINED, NAMESPACE, register_device_kernels
# Importing an op's library module defines the op; this order is the order `tga-fast env` lists them in.
from tga_fast.ops.kernels.segment_pool import library as _segment_pool  # noqa: F401, I001
from tga_fast.ops.kernels.segment_cosine import library as _segment_cosine  # noqa: F401
from tga_fast.ops.kernels.knockout_attention import library as _knockout_attention  # noqa: F401
from tga_fast.ops.kernels.attention_share import library as _attention_share  # noqa: F401

__all__ = ["NAMESPACE", "OPS", "STATUS"]

# Every op's name, for `tga-fast env`.
OPS = tuple(DEFINED)
STATUS = _backends.load()
register_device_kernels(STATUS)
