"""tga_fast: Text-Guided Alignment (ICLR 2025) for vision-language models, with fused kernels.

``tga_fast.ops`` holds the fused ops; ``tga_fast.tga_alignment_loss`` is the TGA alignment loss.
Run ``tga-fast env`` to see which kernel serves each op on each device.
"""

from tga_fast.ops import segment_cosine, segment_pool
from tga_fast.training.loss import AlignmentTerms, tga_alignment_loss

__version__ = "0.1.0"

__all__ = ["AlignmentTerms", "__version__", "segment_cosine", "segment_pool", "tga_alignment_loss"]
