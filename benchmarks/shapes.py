"""The one registry of benchmark shapes: a LLaVA-7B TGA step and a CPU-sized one (``SHAPES``), and the
attention shapes of the knockout and attention-share analyses (``ATTENTION_SHAPES``).

A TGA student step pools, at each of 9 target layers, the image tokens (576 for CLIP-336) and the
retrieved-text tokens (about 60) of every sample of a 1200-token batch, and compares them with the caption.
An analysis pass attends over a 7B model's prompt (32 heads of 128, multi-head or 8 grouped kv heads).
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


@dataclass(frozen=True)
class AttentionShape:
    name: str
    batch: int
    heads: int
    kv_heads: int
    seq_len: int
    dim: int

    def inputs(self, dtype: torch.dtype, device: str, seed: int = 0):
        """``(q, k, v, blocked)``: a prefill with a run of 8 blocked (toxic) tokens in the middle."""
        gen = torch.Generator(device=device).manual_seed(seed)
        q_shape = (self.batch, self.heads, self.seq_len, self.dim)
        kv_shape = (self.batch, self.kv_heads, self.seq_len, self.dim)
        q, k, v = (torch.randn(s, generator=gen, device=device).to(dtype) for s in (q_shape, kv_shape, kv_shape))
        blocked = torch.zeros(self.batch, self.seq_len, dtype=torch.bool, device=device)
        blocked[:, self.seq_len // 2 : self.seq_len // 2 + 8] = True
        return q, k, v, blocked

    def share_inputs(self, dtype: torch.dtype, device: str, seed: int = 0):
        """``(q, k, key_set, rows)`` of attention_share: the share of the last position's attention on the
        8 blocked (toxic) tokens of :meth:`inputs`."""
        q, k, _v, key_set = self.inputs(dtype, device, seed)
        rows = torch.full((self.batch, 1), self.seq_len - 1, dtype=torch.int64, device=device)
        return q, k, key_set, rows

    def bytes_moved(self, dtype: torch.dtype) -> int:
        """knockout_attention: q, k, v read and the output written once."""
        size = torch.empty((), dtype=dtype).element_size()
        return size * self.batch * self.seq_len * self.dim * (2 * self.heads + 2 * self.kv_heads)

    def share_bytes(self, dtype: torch.dtype) -> int:
        """attention_share of one row: K read once (the one q row and the shares are negligible)."""
        size = torch.empty((), dtype=dtype).element_size()
        return size * self.batch * self.kv_heads * self.seq_len * self.dim

    def causal_flops(self) -> float:
        return 2 * self.batch * self.heads * self.seq_len**2 * self.dim  # (QK^T + PV) over the causal half


ATTENTION_SHAPES = {
    "cpu-small": AttentionShape("cpu-small", batch=1, heads=8, kv_heads=2, seq_len=256, dim=64),
    "7b-mha-t1200": AttentionShape("7b-mha-t1200", batch=1, heads=32, kv_heads=32, seq_len=1200, dim=128),
    "7b-gqa-t2048": AttentionShape("7b-gqa-t2048", batch=1, heads=32, kv_heads=8, seq_len=2048, dim=128),
}
