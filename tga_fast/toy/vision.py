"""The world's vision encoder: a small ``CLIPVisionModel`` trained contrastively on image-caption pairs of every
concept (toxic ones included, as CLIP knows them), with a bag-of-words caption tower as the text side.

The image embedding is the mean of the last layer's patch tokens (what LLaVA's projector reads with
``vision_feature_layer=-1`` and the "default" strategy, which drops the CLS token), then a linear projection; the
caption embedding is the mean of its word embeddings, then a linear projection. Both are L2-normalised, so the
pair also serves as the retriever (image -> caption corpus) of TGA.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from tga_fast.toy.text_llm import warmup_cosine


@dataclass(frozen=True)
class VisionConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    patch: int = 16  # 2 x 2 patches per 32 x 32 image: 4 image tokens per image in the LVLM (32: the 1-token ablation)
    embed: int = 64
    steps: int = 300
    batch_size: int = 96
    lr: float = 2e-3
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> "VisionConfig":
        return cls(steps=150, seed=seed)


def clip_vision_config(cfg: VisionConfig, image_size: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=cfg.hidden,
        intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=image_size,
        patch_size=cfg.patch,
        projection_dim=cfg.embed,
    )


class CaptionTower(nn.Module):
    """Caption ids ``[B, T]`` (0 = padding) -> L2-normalised ``[B, embed]``: mean word embedding, then linear."""

    def __init__(self, vocab_size: int, embed: int):
        super().__init__()
        self.words = nn.EmbeddingBag(vocab_size, embed, mode="mean", padding_idx=0)
        self.proj = nn.Linear(embed, embed)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.proj(self.words(ids)), dim=-1)


class DualEncoder(nn.Module):
    """The CLIP-like pair: ``vision`` (a ``CLIPVisionModel``), ``image_proj``, ``captions``, a learned temperature."""

    def __init__(self, vision_config, vocab_size: int, embed: int):
        super().__init__()
        from transformers import CLIPVisionModel

        self.vision = CLIPVisionModel(vision_config)
        self.image_proj = nn.Linear(vision_config.hidden_size, embed)
        self.captions = CaptionTower(vocab_size, embed)
        self.log_scale = nn.Parameter(torch.tensor(2.5))

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> L2-normalised ``[B, embed]`` (mean of the last layer's patch tokens, CLS dropped)."""
        patches = self.vision(pixel_values=pixel_values).last_hidden_state[:, 1:]
        return nn.functional.normalize(self.image_proj(patches.mean(dim=1)), dim=-1)


class CaptionVocabulary:
    """Word ids of captions for the caption tower (its own small vocabulary; 0 is padding)."""

    def __init__(self, corpus):
        words = sorted({w for text in corpus for w in text.split()})
        self.ids = {w: i + 1 for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.ids) + 1

    def encode(self, texts) -> torch.Tensor:
        rows = [[self.ids.get(w, 0) for w in t.split()] for t in texts]
        out = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out


def train_vision(pixel_values: torch.Tensor, captions: list, corpus: list[str], cfg: VisionConfig, progress=True):
    """Contrastive training (symmetric InfoNCE; images of the same caption count as positives of each other).

    Args:
        pixel_values: ``[N, 3, H, W]`` preprocessed training images; ``captions``: per image its caption, or a
            tuple of phrasings of it (the first is the caption; each step draws one, as web captions vary).
        corpus: every text of the world (the caption tower's vocabulary).

    Returns:
        ``(dual_encoder, caption_vocabulary)`` in eval mode.
    """
    torch.manual_seed(cfg.seed)
    vocabulary = CaptionVocabulary(corpus)
    model = DualEncoder(clip_vision_config(cfg, pixel_values.shape[-1]), len(vocabulary), cfg.embed)
    variants = [(c,) if isinstance(c, str) else tuple(c) for c in captions]
    label_of = {caption: i for i, caption in enumerate(dict.fromkeys(v[0] for v in variants))}
    labels = torch.tensor([label_of[v[0]] for v in variants])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, cfg.steps))
    rng = random.Random(cfg.seed)
    model.train()
    bar = tqdm(range(cfg.steps), desc="vision encoder", disable=not progress, leave=False)
    for _ in bar:
        picked = rng.sample(range(len(variants)), min(cfg.batch_size, len(variants)))
        rows = torch.tensor(picked)
        images = model.encode_images(pixel_values[rows])
        texts = model.captions(vocabulary.encode([rng.choice(variants[i]) for i in picked]))
        logits = model.log_scale.exp() * images @ texts.T  # [B, B]
        same = (labels[rows][:, None] == labels[rows][None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.T, targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.detach():.3f}", refresh=False)
    return model.eval(), vocabulary


@torch.no_grad()
def retrieval_accuracy(model: DualEncoder, vocabulary, pixel_values, captions, corpus) -> float:
    """Top-1 image -> corpus caption accuracy (exact caption)."""
    corpus_emb = model.captions(vocabulary.encode(corpus))
    best = (model.encode_images(pixel_values) @ corpus_emb.T).argmax(dim=1)
    return sum(corpus[int(b)] == c for b, c in zip(best, captions)) / len(captions)


def save_dual_encoder(dual: DualEncoder, folder) -> None:
    """safetensors of the whole pair, plus the vision tower alone in HF layout (``clip_vision/``)."""
    from pathlib import Path

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in dual.state_dict().items()}, str(Path(folder) / "dual_encoder.safetensors"))
    dual.vision.save_pretrained(Path(folder) / "clip_vision")


def load_dual_encoder(folder, cfg: VisionConfig, image_size: int, corpus) -> DualEncoder:
    from pathlib import Path

    from safetensors.torch import load_file

    dual = DualEncoder(clip_vision_config(cfg, image_size), len(CaptionVocabulary(corpus)), cfg.embed)
    dual.load_state_dict(load_file(str(Path(folder) / "dual_encoder.safetensors")))
    return dual.eval()
