"""Text and image encoders for retrieval, loaded from local paths through transformers.

``TextEncoder(path)``: a CLIP-style dual encoder's text tower (``get_text_features``) when the checkpoint is one
(CLIP, SigLIP, ...), else any text encoder (BERT, MiniLM, ...) with masked mean pooling, as sentence-transformers
does. ``ImageEncoder(path)``: the dual encoder's image tower (``get_image_features``). Both are batched, run on any
device and dtype, show a progress bar (``progress=False`` hides it) and return L2-normalised float32 ``[N, d]`` on
the CPU. Texts are encoded longest first (less padding per batch) and returned in the input order.
"""

from __future__ import annotations

import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from tga_fast.errors import UserError, require_positive

# config.model_type of checkpoints whose model has get_text_features / get_image_features in a shared space.
DUAL_ENCODER_TYPES = frozenset({"clip", "siglip", "siglip2", "chinese_clip", "altclip", "metaclip_2"})
# Dual encoders trained on fixed-length padded text (SigLIP): pad to max_length as at training.
PAD_TO_MAX_LENGTH_TYPES = frozenset({"siglip", "siglip2"})


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": a GPU when present, else the CPU; a string torch cannot parse is a :class:`UserError`."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise UserError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, ...): {error}") from None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Default float16 on CUDA, float32 elsewhere; strings like "bfloat16" are accepted."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype) or not value.is_floating_point:
            raise UserError(f"dtype {dtype!r} is not a torch floating dtype (float32, float16, bfloat16)")
        return value
    return dtype


def _features(output: Any) -> torch.Tensor:
    """get_*_features returns a tensor (transformers 4) or an output whose pooler_output is the projection (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def check_model_folder(path: str | os.PathLike, what: str = "encoder") -> Path:
    """``path`` as a Path if it is a local checkpoint folder (a directory holding ``config.json``), else a
    ``FileNotFoundError`` naming it and ``what``. Encoders never reach the Hub: a Hub id is not a folder here."""
    folder = Path(path)
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{what} {folder} {state}: encoders load from a local folder only (save or "
                                "download the checkpoint there first)")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} {folder} has no config.json: not a saved checkpoint (encoders load from "
                                "a local folder only)")
    return folder


def _load_model(path: str | os.PathLike, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModel

    check_model_folder(path)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    return config, model.to(device).eval()


class TextEncoder:
    """``TextEncoder(path).encode(texts) -> [N, d]`` L2-normalised float32 on the CPU.

    Args:
        path: a local checkpoint folder (model + tokenizer).
        device, dtype: default CUDA/float16 when a GPU is present, else CPU/float32.
        batch_size: texts per forward.
        max_length: token limit (default: the model's position limit).
        progress: show a tqdm bar.
    """

    def __init__(self, path, *, device=None, dtype=None, batch_size: int = 256, max_length: int | None = None,
                 progress: bool = True):
        from transformers import AutoTokenizer

        require_positive(batch_size, "batch_size")
        self.path, self.device = str(path), resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.config, self.model = _load_model(path, self.device, self.dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.dual = self.config.model_type in DUAL_ENCODER_TYPES
        text_config = getattr(self.config, "text_config", None) or self.config
        limit = getattr(text_config, "max_position_embeddings", None) or 512
        model_max = getattr(self.tokenizer, "model_max_length", None) or limit
        self.max_length = max_length or min(limit, model_max)
        self.padding = "max_length" if self.config.model_type in PAD_TO_MAX_LENGTH_TYPES else True
        self.batch_size, self.progress = batch_size, progress
        forward = self.model.get_text_features if self.dual else self.model.forward
        self._inputs = set(inspect.signature(forward).parameters)  # e.g. no token_type_ids for CLIP

    @torch.inference_mode()
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=self.padding, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        batch = {name: value for name, value in batch.items() if name in self._inputs}
        if self.dual:
            features = _features(self.model.get_text_features(**batch)).float()
        else:
            hidden = self.model(**batch).last_hidden_state.float()  # [B, T, D]
            mask = batch["attention_mask"].unsqueeze(-1).float()
            features = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(features, dim=-1).cpu()

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """Embed ``texts`` (N strings) -> ``[N, d]`` float32, L2-normalised, CPU, in the input order."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string (wrap it in a list)")
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts[{bad}] is {type(texts[bad]).__name__}, not str")
        size = self.batch_size if batch_size is None else require_positive(batch_size, "batch_size")
        if not texts:
            raise ValueError("texts is empty")
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # longest first: little padding per batch
        show = self.progress if progress is None else progress
        parts = []
        with tqdm(total=len(texts), desc="encode texts", unit="text", disable=not show) as bar:
            for start in range(0, len(texts), size):
                rows = order[start : start + size]
                parts.append(self._encode_batch([texts[i] for i in rows]))
                bar.update(len(rows))
        out = torch.empty(len(texts), parts[0].shape[1], dtype=torch.float32)
        out[torch.tensor(order)] = torch.cat(parts)
        return out


def load_image(image: Any):
    """A PIL RGB image from a PIL image, a path, or an ``[H, W(, C)]`` uint8 array."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "__array__"):
        import numpy as np

        return Image.fromarray(np.asarray(image)).convert("RGB")
    raise TypeError(f"an image must be a PIL image, a path or an array, got {type(image).__name__}")


class ImageEncoder:
    """``ImageEncoder(path).encode(images) -> [N, d]`` L2-normalised float32 on the CPU, from a CLIP-style dual
    encoder (the same space as ``TextEncoder(path)``).

    ``images`` may be PIL images, paths (decoded lazily, ``workers`` threads ahead of the model) or uint8 arrays.
    """

    def __init__(self, path, *, device=None, dtype=None, batch_size: int = 64, workers: int = 4,
                 progress: bool = True):
        from transformers import AutoImageProcessor

        require_positive(batch_size, "batch_size")
        require_positive(workers, "workers")
        self.path, self.device = str(path), resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.config, self.model = _load_model(path, self.device, self.dtype)
        if self.config.model_type not in DUAL_ENCODER_TYPES or not hasattr(self.model, "get_image_features"):
            raise ValueError(f"{path} is a {self.config.model_type!r} model; ImageEncoder needs a dual image-text "
                             f"encoder, one of {sorted(DUAL_ENCODER_TYPES)}")
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        self.batch_size, self.workers, self.progress = batch_size, workers, progress

    @torch.inference_mode()
    def encode_pil(self, images: list) -> torch.Tensor:
        """One batch of PIL images -> ``[B, d]``."""
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        features = _features(self.model.get_image_features(pixel_values=pixels)).float()
        return torch.nn.functional.normalize(features, dim=-1).cpu()

    def encode(self, images: Iterable, *, batch_size: int | None = None, progress: bool | None = None) -> torch.Tensor:
        """Embed ``images`` -> ``[N, d]`` float32, L2-normalised, CPU, in the input order."""
        images = list(images)
        size = self.batch_size if batch_size is None else require_positive(batch_size, "batch_size")
        show = self.progress if progress is None else progress
        parts = []
        with ThreadPoolExecutor(self.workers) as pool, \
                tqdm(total=len(images), desc="encode images", unit="image", disable=not show) as bar:
            batches = [images[s : s + size] for s in range(0, len(images), size)]
            pending = pool.submit(lambda b: list(map(load_image, b)), batches[0]) if batches else None
            for i in range(len(batches)):
                decoded = pending.result()
                if i + 1 < len(batches):  # decode the next batch while this one runs
                    pending = pool.submit(lambda b: list(map(load_image, b)), batches[i + 1])
                parts.append(self.encode_pil(decoded))
                bar.update(len(decoded))
        if not parts:
            raise ValueError("images is empty")
        return torch.cat(parts)
