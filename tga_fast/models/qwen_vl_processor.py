"""Qwen2-VL / Qwen2.5-VL's processor for text and images, for machines without torchvision.

transformers 5.24 cannot build ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` without torchvision: their video
processor class is looked up when the processor is constructed (checked 2026-12 with transformers 5.24).
:func:`tga_fast.models.load_model` falls back to this class there, and the tiny test models use it.

    processor = ImageOnlyQwenVLProcessor.from_pretrained("checkpoints/Qwen2-VL-2B-Instruct")
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["ImageOnlyQwenVLProcessor"]


class ImageOnlyQwenVLProcessor:
    """Qwen2-VL's processor for images, without its video processor.

    transformers 5.24's ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` cannot be built without torchvision (their
    video processor class is looked up at construction, 2026-12, transformers 5.24), which CPU machines often lack. This
    class does what they do for text and images: each ``image_token`` of the text becomes
    ``prod(image_grid_thw) // merge_size**2`` copies (the merged patches the model scatters in), the tokenizer
    runs on the expanded text, and ``mm_token_type_ids`` marks the image tokens (1) for the 3-D positions. It
    returns the replacement offsets as the ProcessorMixin does (``return_text_replacement_offsets=True``).
    """

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None):
        self.image_processor, self.tokenizer = image_processor, tokenizer
        # transformers' own default when the tokenizer names no image token (Qwen2VLProcessor.__init__).
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.chat_template = chat_template or tokenizer.chat_template

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def __call__(self, text=None, images=None, return_text_replacement_offsets: bool = False, **kwargs):
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        image_inputs, counts = {}, []
        if images is not None:
            flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
            image_inputs = dict(self.image_processor(flat, return_tensors="pt"))
            merge = self.image_processor.merge_size ** 2
            counts = (image_inputs["image_grid_thw"].prod(dim=-1) // merge).tolist()
        placed = sum(t.count(self.image_token) for t in texts)
        if placed != len(counts):
            raise ValueError(f"{placed} {self.image_token} in the texts but {len(counts)} images")
        expanded, offsets, remaining = [], [], iter(counts)
        for sample in texts:
            pieces, sample_offsets, cursor, shift = [], [], 0, 0
            at = sample.find(self.image_token)
            while at >= 0:
                replacement = self.image_token * next(remaining)
                pieces += [sample[cursor:at], replacement]
                end = at + len(self.image_token)
                sample_offsets.append({"type": "image", "span": (at, end),
                                       "new_span": (at + shift, at + shift + len(replacement))})
                shift += len(replacement) - len(self.image_token)
                cursor = end
                at = sample.find(self.image_token, cursor)
            pieces.append(sample[cursor:])
            expanded.append("".join(pieces))
            offsets.append(sample_offsets)
        encoded = self.tokenizer(expanded, **kwargs)
        ids = encoded["input_ids"]
        ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
        encoded["mm_token_type_ids"] = (ids == self.image_token_id).to(ids.dtype)
        data = {**encoded, **image_inputs}
        if return_text_replacement_offsets:
            data["text_replacement_offsets"] = offsets
        return BatchFeature(data, skip_tensor_conversion=["text_replacement_offsets"])

    @classmethod
    def from_pretrained(cls, folder, **kwargs) -> "ImageOnlyQwenVLProcessor":
        """From a checkpoint folder: its tokenizer (``AutoTokenizer``), its image processor settings read by the PIL
        image processor, and its chat template (``chat_template.jinja`` / ``chat_template.json`` when present)."""
        import json

        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder, **kwargs)
        folder, template = Path(folder), None
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        elif (folder / "chat_template.json").is_file():
            template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
        return cls(image_processor, tokenizer, chat_template=template)

    def save_pretrained(self, folder) -> None:
        """Saves the tokenizer, the image processor and the chat template (``chat_template.jinja``)."""
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        if self.chat_template:
            (folder / "chat_template.jinja").write_text(self.chat_template)
