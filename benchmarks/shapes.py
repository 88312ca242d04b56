"""The one registry of benchmark shapes: a LLaVA-7B TGA step and a CPU-sized one.

A TGA student step pools, at each of 9 target layers, the image tokens (576 for CLIP-336) and the
retrieved-text tokens (about 60) of every sample of a 1200-token batch, and compares them with the caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AlignmentShape:
    name: str
    batch: int
    seq_len: int
    dim: int
    layers: int
    image_tokens: int
    retrieved_tokens: int

    def spans(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """``[B, 2, 2]``: (image span, retrieved-text span) per sample; retrieved lengths vary by sample."""
        rows = []
        for b in range(self.batch):
            retrieved = max(1, self.retrieved_tokens + 4 * (b - self.batch // 2))
            retrieved_start = 35  # a system prompt and "Retrieved Text: " come first
            image_start = retrieved_start + retrieved + 2
            rows.append([[image_start, image_start + self.image_tokens], [retrieved_start, retrieved_start + retrieved]])
        spans = torch.tensor(rows, dtype=torch.int64, device=device)
        assert int(spans.max()) <= self.seq_len, f"{self.name}: spans do not fit in seq_len"
        return spans

    def hidden(self, dtype=torch.float32, device="cpu", seed=0, requires_grad=False, layers=None) -> list[torch.Tensor]:
        """The student's hidden states at the target layers: ``layers`` (default all) tensors ``[B, T, D]``."""
        gen = torch.Generator(device=device).manual_seed(seed)
        return [
            torch.randn(self.batch, self.seq_len, self.dim, generator=gen, device=device, dtype=dtype).requires_grad_(requires_grad)
            for _ in range(self.layers if layers is None else layers)
        ]

    def targets(self, dtype=torch.float32, device="cpu", seed=1) -> torch.Tensor:
        """The caption's mean hidden states ``[L, B, D]`` (teacher pass, no grad)."""
        gen = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(self.layers, self.batch, self.dim, generator=gen, device=device, dtype=dtype)

    def span_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of hidden-state rows inside the spans of one layer (what a fused forward must read)."""
        rows = int((self.spans()[..., 1] - self.spans()[..., 0]).sum())
        return rows * self.dim * torch.empty((), dtype=dtype).element_size()

    def layer_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of one layer's ``[B, T, D]`` hidden states (what a backward must write)."""
        return self.batch * self.seq_len * self.dim * torch.empty((), dtype=dtype).element_size()


SHAPES = {
    "llava7b": AlignmentShape("llava7b", batch=4, seq_len=1200, dim=4096, layers=9, image_tokens=576, retrieved_tokens=60),
    "cpu-small": AlignmentShape("cpu-small", batch=2, seq_len=400, dim=1024, layers=9, image_tokens=144, retrieved_tokens=30),
}
