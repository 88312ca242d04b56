"""A small end-to-end use of the ops: the TGA alignment loss trains a projector on a frozen toy decoder.

Until the miniature world lands (``tga_fast.toy``), ``tga-fast demo`` runs this. A frozen stack of residual
blocks stands in for the LLM; "images" are patch features derived from a caption; a trainable projector maps
them into the token space. Each step runs the teacher pass (caption alone, pooled with ``segment_pool``) and
the student pass (retrieved text + image tokens + question, padded to different lengths), and optimises only
``tga_alignment_loss`` built with ``segment_cosine``: the image tokens' cosine to the caption rises at every
target layer, layer by layer, as in the paper.

    student row b:  [prefix][retrieved text][image tokens][question][pad...]
                             ^ span 1       ^ span 0
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from tga_fast.ops import segment_pool
from tga_fast.training.loss import tga_alignment_loss


@dataclass
class QuickstartConfig:
    steps: int = 200
    seed: int = 0
    batch: int = 8
    dim: int = 256
    vocab: int = 64
    layers: int = 4
    target_layers: tuple[int, ...] = (1, 2, 3)
    caption_tokens: int = 12
    image_tokens: int = 16
    patch_dim: int = 64
    lr: float = 3e-3
    out: str | None = None


class ResidualBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.mlp(self.norm(hidden))


def layer_states(blocks: nn.ModuleList, embeds: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """``hidden_states[k]`` for k in layers (k = 0: embeddings, k >= 1: output of block k), each ``[B, T, D]``."""
    states, hidden = {0: embeds}, embeds
    for index, block in enumerate(blocks[: max(layers)], start=1):
        hidden = block(hidden)
        states[index] = hidden
    return [states[k] for k in layers]


def _batch(cfg: QuickstartConfig, gen: torch.Generator, embed: nn.Embedding, patch_map: torch.Tensor):
    """One padded batch: student embeds ``[B, T, D]`` (image rows left for the projector), spans, caption ids."""
    captions = torch.randint(0, cfg.vocab, (cfg.batch, cfg.caption_tokens), generator=gen)
    # Patch features carry the caption's meaning (its mean embedding) plus per-patch noise: [B, P, patch_dim].
    meaning = embed(captions).mean(1) @ patch_map
    patches = meaning[:, None, :] + 0.5 * torch.randn(cfg.batch, cfg.image_tokens, cfg.patch_dim, generator=gen)
    prefix = torch.randint(1, 4, (cfg.batch,), generator=gen)  # different lengths per sample
    question = torch.randint(2, 6, (cfg.batch,), generator=gen)
    retrieved = cfg.caption_tokens // 2  # the self-match rule: the caption's first half
    lengths = prefix + retrieved + cfg.image_tokens + question
    seq_len = int(lengths.max())
    ids = torch.randint(0, cfg.vocab, (cfg.batch, seq_len), generator=gen)
    spans = torch.zeros(cfg.batch, 2, 2, dtype=torch.int64)
    for b in range(cfg.batch):
        start = int(prefix[b])
        ids[b, start : start + retrieved] = captions[b, :retrieved]
        image_start = start + retrieved
        spans[b, 0] = torch.tensor([image_start, image_start + cfg.image_tokens])
        spans[b, 1] = torch.tensor([start, image_start])
    return ids, patches, spans, captions


def run_quickstart(cfg: QuickstartConfig) -> dict:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    embed = nn.Embedding(cfg.vocab, cfg.dim)
    blocks = nn.ModuleList(ResidualBlock(cfg.dim) for _ in range(cfg.layers))
    for module in (embed, blocks):
        module.requires_grad_(False)
    patch_map = torch.randn(cfg.dim, cfg.patch_dim) / cfg.dim**0.5
    projector = nn.Sequential(nn.Linear(cfg.patch_dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.dim))
    optimizer = torch.optim.Adam(projector.parameters(), lr=cfg.lr)

    history, start_time = [], time.perf_counter()
    print(f"{'step':>5} {'pair':>8} {'hinge':>8}  image cos per target layer {list(cfg.target_layers)}")
    for step in range(cfg.steps):
        ids, patches, spans, captions = _batch(cfg, gen, embed, patch_map)
        with torch.no_grad():  # teacher pass: the caption alone
            caption_states = layer_states(blocks, embed(captions), cfg.target_layers)
            whole_caption = torch.tensor([[0, cfg.caption_tokens]]).expand(cfg.batch, 1, 2).contiguous()
            targets = torch.stack([segment_pool(h, whole_caption)[:, 0] for h in caption_states])  # [L, B, D]
        embeds = embed(ids)
        image_rows = torch.arange(cfg.image_tokens) + spans[:, 0, :1]  # [B, P] positions of the image tokens
        embeds = embeds.scatter(1, image_rows[..., None].expand(-1, -1, cfg.dim), projector(patches))
        student_states = layer_states(blocks, embeds, cfg.target_layers)
        terms = tga_alignment_loss(
            hidden=student_states, spans=spans, targets=targets, progress=step / cfg.steps
        )
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        cos = terms.image_cos.mean(dim=1).tolist()
        history.append({"step": step, "pair": terms.pair.item(), "hinge": terms.hinge.item(), "image_cos": cos})
        if step % max(1, cfg.steps // 6) == 0 or step == cfg.steps - 1:
            print(f"{step:5d} {terms.pair.item():8.4f} {terms.hinge.item():8.4f}  " + " ".join(f"{c:+.3f}" for c in cos))
    seconds = time.perf_counter() - start_time
    result = {"config": asdict(cfg), "seconds": seconds, "history": history}
    first, last = history[0]["image_cos"], history[-1]["image_cos"]
    print(f"\nimage/caption cosine, first -> last step: "
          + ", ".join(f"layer {k}: {a:+.3f} -> {b:+.3f}" for k, a, b in zip(cfg.target_layers, first, last)))
    print(f"{cfg.steps} steps in {seconds:.1f} s")
    if cfg.out:
        _save(result, cfg, Path(cfg.out))
    return result


def _save(result: dict, cfg: QuickstartConfig, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cos = torch.tensor([h["image_cos"] for h in result["history"]])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for index, layer in enumerate(cfg.target_layers):
        ax.plot(cos[:, index], label=f"layer {layer}")
    ax.set_xlabel("step")
    ax.set_ylabel("cos(image tokens, caption)")
    ax.set_title("TGA alignment on a toy decoder")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "cosines.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out / 'result.json'} and {out / 'cosines.png'}")
