"""Root conftest: settings that must exist before anything imports triton or tga_fast.

Triton reads TRITON_INTERPRET at its first import (bitsandbytes and transformers' llama module import it
too), so the Triton kernels run on CPU tensors in the tests. TGA_FAST_STRICT turns a silent fallback to the
reference into an error, so a test of the C++ kernel cannot pass by testing the reference by mistake.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TGA_FAST_STRICT", "1")
