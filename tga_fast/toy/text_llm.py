"""The world's text LLM: a small ``LlamaForCausalLM`` trained from scratch on the world's text requests, so it
answers benign requests and refuses use-requests about toxic concepts (its text safety mechanism).

The object mention stands where an image will later go ("USER: a red knife\\nhow do i use this ? ASSISTANT:"),
as LLaVA puts the image before the question: the LVLM built on this LLM reads image tokens at that place.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from tga_fast.models.prompts import Prompt
from tga_fast.toy.data import Encoder, Example
from tga_fast.toy.world import World


@dataclass(frozen=True)
class TextLLMConfig:
    layers: int = 6
    hidden: int = 96
    heads: int = 4
    steps: int = 500
    batch_size: int = 48
    lr: float = 3e-3
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> "TextLLMConfig":
        return cls(layers=4, hidden=64, steps=300, seed=seed)


def llama_config(cfg: TextLLMConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=2 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def warmup_cosine(step: int, total: int, warmup: float = 0.05) -> float:
    """Learning-rate factor: linear warmup over the first ``warmup`` of the steps, then cosine to 0."""
    warm = max(1, int(warmup * total))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_text_llm(world: World, tokenizer, cfg: TextLLMConfig, progress: bool = True):
    """Trains the text LLM on the text requests of the world's ``train`` combinations; returns it in eval mode."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    model.set_attn_implementation("sdpa")
    encoder = Encoder(tokenizer)
    examples = mention_examples(world, world.all_requests("train"))
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, cfg.steps))
    model.train()
    bar = tqdm(range(cfg.steps), desc="text LLM", disable=not progress, leave=False)
    for _ in bar:
        batch = encoder.collate(rng.sample(examples, min(cfg.batch_size, len(examples))))
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.detach():.3f}", refresh=False)
    return model.eval()


def mention_examples(world: World, requests) -> list[Example]:
    """Text examples of ``requests`` with every phrasing of the object mention ("a red knife", "a picture of a red
    knife", ...), so the mechanism reads the object however a (retrieved) text names it."""
    return [
        Example(Prompt(question=r.question, text=mention), r.answer, safety=r.toxic)
        for r in requests
        for mention in world.mentions(r.colour, r.concept)
    ]


def config_dict(cfg: TextLLMConfig) -> dict:
    return asdict(cfg)
