"""The TGA data builder (``tga-fast retrieve``): for each sample of a LLaVA-format dataset, retrieve the nearest
texts of a caption corpus (plus an optional toxic-text corpus) for its image, apply the self-match rule, and write
the dataset back with ``retrieved`` in every record.

Steps: read and de-duplicate the corpora -> embed them with the text tower (cached as an ``Index`` in
``index_dir``, reused on the next run) -> stream the dataset in batches: decode the images (threads, one batch
ahead), embed them, search top-k, choose the text -> append the records to a resumable JSONL.

Fields added to a record with a query (image, or caption with ``query="caption"``):
``retrieved`` (str), ``retrieved_score`` (float), ``retrieved_id`` (corpus id, ``"<corpus stem>:<id>"``),
``retrieved_toxic`` (bool: it came from the toxic corpus), ``retrieved_self_match`` ("half"/"next", only when the
rule changed the text), and with ``top_k > 1`` ``retrieved_topk`` (``[{"id", "text", "score"}]``, raw ranking).
A record without a query (text-only samples) is written unchanged. A bad record (image missing or unreadable,
not an object, invalid JSON line) is written without ``retrieved`` but with ``retrieval_error`` and logged with
its id and line: the run never stops for one record, and no record is dropped.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from tga_fast.retrieval.corpus import dedupe, fingerprint, read_corpus
from tga_fast.retrieval.index import Index
from tga_fast.retrieval.resumable import ResumableJsonl, write_json_atomic
from tga_fast.retrieval.self_match import choose

log = logging.getLogger(__name__)

# Extra candidates fetched for the "next" rule (the caption may be in the corpus more than once after
# normalisation, though exact duplicates are removed).
NEXT_MARGIN = 8
TOXIC_PREFIX = "toxic"


@dataclass
class RetrieveConfig:
    """Options of ``retrieve`` (and of ``tga-fast retrieve``)."""

    data: str  # LLaVA-format .json (a list) or .jsonl
    corpus: str  # caption corpus: .txt / .jsonl / .json
    out: str  # output .jsonl (streamed) or .json (streamed to <out>.partial.jsonl, converted at the end)
    image_encoder: str | None = None  # local CLIP/SigLIP folder: queries are images (query="image")
    text_encoder: str | None = None  # for the corpus; default: image_encoder's text tower
    image_folder: str = "."  # root of the records' relative image paths
    toxic_corpus: str | None = None
    query: str = "image"  # "image" (cross-modal) or "caption" (text to text, any text encoder)
    top_k: int = 1
    self_match: str = "half"  # "half" | "next" | "keep"
    caption_field: str = "caption"
    text_field: str = "text"  # of corpus objects
    index_dir: str | None = None  # default <out>.index
    backend: str = "auto"  # Index backend
    index_kind: str = "flat"  # "flat" (exact) or "ivf"
    batch_size: int = 256  # records per search batch (and per durable write)
    encoder_batch_size: int = 64
    device: str | None = None
    dtype: str | None = None
    workers: int = 4  # image-decoding threads
    progress: bool = True
    overwrite: bool = False


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line or item number, record, error)`` for each record of a LLaVA .json (list) or .jsonl file."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        if path.suffix.lower() == ".json":
            data = json.load(f)
            if not isinstance(data, list):
                raise ValueError(f"{path}: a .json dataset must be a list of records")
            for number, record in enumerate(data, start=1):
                yield number, record, None
            return
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as error:
                yield number, {"raw": line.rstrip("\n")}, f"invalid JSON: {error}"


def _image_path(record: dict, folder: Path) -> Path | None:
    image = record.get("image")
    if isinstance(image, list):  # multi-image records: the first image is the query
        image = image[0] if image else None
    if not image:
        return None
    return folder / image


def _load(path: Path):
    from tga_fast.retrieval.encoders import load_image

    try:
        return load_image(path), None
    except FileNotFoundError:
        return None, f"image not found: {path}"
    except Exception as error:  # any decoding failure is this record's problem, not the run's
        return None, f"image unreadable: {path}: {type(error).__name__}: {error}"


def _build_or_load_index(config: RetrieveConfig, text_encoder_path: str, text_encoder=None) -> Index:
    index_dir = Path(config.index_dir or f"{config.out}.index")
    source = {"corpus": fingerprint(config.corpus), "toxic_corpus": fingerprint(config.toxic_corpus)
              if config.toxic_corpus else None, "text_encoder": str(Path(text_encoder_path).resolve()),
              "text_field": config.text_field, "kind": config.index_kind}
    source_path = index_dir / "source.json"
    if (index_dir / "index.json").exists() and source_path.exists():
        if json.loads(source_path.read_text()) == source:
            log.info("reusing the corpus index in %s", index_dir)
            return Index.load(index_dir, config.backend, **({"device": config.device} if config.device else {}))
        log.warning("%s was built from other corpora or encoder: rebuilding it", index_dir)
    texts, ids = read_corpus(config.corpus, text_field=config.text_field)
    if config.toxic_corpus:
        toxic_texts, toxic_ids = read_corpus(config.toxic_corpus, text_field=config.text_field, prefix=TOXIC_PREFIX)
        texts, ids = texts + toxic_texts, ids + toxic_ids
    count = len(texts)
    texts, ids = dedupe(texts, ids)
    log.info("corpus: %d texts (%d duplicates removed)", len(texts), count - len(texts))
    if text_encoder is None:
        from tga_fast.retrieval.encoders import TextEncoder

        text_encoder = TextEncoder(text_encoder_path, device=config.device, dtype=config.dtype)
    embeddings = text_encoder.encode(texts, batch_size=config.encoder_batch_size * 4, progress=config.progress)
    index = Index.build(embeddings, config.backend, kind=config.index_kind, texts=texts, ids=ids,
                        **({"device": config.device} if config.device else {}))
    index.save(index_dir)
    write_json_atomic(source_path, source)
    return index


def _annotate(record: dict, scores: list[float], ids: list[int], index: Index, config: RetrieveConfig, counts):
    candidates = [(index.texts[i], s) for i, s in zip(ids, scores) if i >= 0]
    if not candidates:
        record["retrieval_error"] = "no corpus text found (IVF search visited no non-empty list)"
        counts["errors"] += 1
        return
    caption = record.get(config.caption_field)
    choice = choose(candidates, caption if isinstance(caption, str) else None, config.self_match)
    chosen_id = index.ids[ids[choice.rank]]
    record["retrieved"] = choice.text
    record["retrieved_score"] = round(float(choice.score), 6)
    record["retrieved_id"] = chosen_id
    record["retrieved_toxic"] = str(chosen_id).startswith(TOXIC_PREFIX + ":")
    if choice.applied:
        record["retrieved_self_match"] = choice.applied
        counts[f"self_match_{choice.applied}"] += 1
    if config.top_k > 1:
        record["retrieved_topk"] = [{"id": index.ids[i], "text": index.texts[i], "score": round(float(s), 6)}
                                    for i, s in zip(ids[: config.top_k], scores[: config.top_k]) if i >= 0]
    counts["retrieved"] += 1
    counts["retrieved_toxic"] += int(record["retrieved_toxic"])


def retrieve(config: RetrieveConfig) -> dict:
    """Run the builder; returns the counts (also kept in ``<out>.progress.json``). Resumes an interrupted run of
    the same inputs and options; a finished one returns at once."""
    if config.query not in ("image", "caption"):
        raise ValueError(f"query must be 'image' or 'caption', got {config.query!r}")
    if config.query == "image" and not config.image_encoder:
        raise ValueError("query='image' needs image_encoder (a local CLIP/SigLIP folder)")
    text_encoder_path = config.text_encoder or config.image_encoder
    if not text_encoder_path:
        raise ValueError("query='caption' needs text_encoder")
    if config.query == "image" and config.text_encoder and config.text_encoder != config.image_encoder:
        log.warning("text_encoder differs from image_encoder: the two must embed into the same space")
    if config.top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {config.top_k}")
    out = Path(config.out)
    work_path = out if out.suffix.lower() != ".json" else out.with_name(out.name + ".partial.jsonl")
    options = {k: v for k, v in asdict(config).items()
               if k in ("query", "top_k", "self_match", "caption_field", "text_field", "index_kind", "image_folder")}
    fingerprint_ = {"data": fingerprint(config.data), "corpus": fingerprint(config.corpus),
                    "toxic_corpus": fingerprint(config.toxic_corpus) if config.toxic_corpus else None,
                    "image_encoder": config.image_encoder, "text_encoder": text_encoder_path, **options}
    counts = {"records": 0, "retrieved": 0, "no_query": 0, "errors": 0, "self_match_half": 0, "self_match_next": 0,
              "retrieved_toxic": 0}
    writer = ResumableJsonl(work_path, fingerprint_, overwrite=config.overwrite)
    if writer.complete:
        if work_path != out and work_path.exists():
            _jsonl_to_json(work_path, out)
        log.info("%s is complete", config.out)
        return writer.counts
    counts.update(writer.counts)
    with writer:
        if config.query == "image":
            from tga_fast.retrieval.encoders import ImageEncoder

            index = _build_or_load_index(config, text_encoder_path)  # the text tower is freed before images
            encoder = ImageEncoder(config.image_encoder, device=config.device, dtype=config.dtype,
                                   batch_size=config.encoder_batch_size, workers=config.workers, progress=False)
        else:
            from tga_fast.retrieval.encoders import TextEncoder

            encoder = TextEncoder(text_encoder_path, device=config.device, dtype=config.dtype,
                                  batch_size=config.encoder_batch_size, progress=False)
            index = _build_or_load_index(config, text_encoder_path, encoder)
        k_search = min(index.ntotal, config.top_k + (NEXT_MARGIN if config.self_match == "next" else 0))
        folder = Path(config.image_folder)
        records = (item for position, item in enumerate(iter_records(config.data)) if position >= writer.done)
        with ThreadPoolExecutor(max(1, config.workers)) as pool, \
                tqdm(desc="retrieve", unit="record", initial=writer.done, disable=not config.progress) as bar:
            pending = _next_batch(records, config, folder, pool)
            while pending:
                batch = pending
                pending = _next_batch(records, config, folder, pool)  # decode the next batch meanwhile
                _process(batch, encoder, index, k_search, config, counts)
                writer.write_batch([record for _, record, _, _ in batch], counts)
                bar.update(len(batch))
        writer.finish(counts)
    if work_path != out:
        _jsonl_to_json(work_path, out)
    log.info("retrieval done: %s", counts)
    return counts


def _next_batch(records, config: RetrieveConfig, folder: Path, pool) -> list:
    """Up to ``batch_size`` of ``(number, record, error, query)``, where query is a future of (image, error), a
    caption string, or None (no query)."""
    batch = []
    for number, record, error in records:
        query = None
        if error is None and not isinstance(record, dict):
            record, error = {"raw": record}, f"a record must be a JSON object, got {type(record).__name__}"
        if error is None:
            if config.query == "image":
                path = _image_path(record, folder)
                query = pool.submit(_load, path) if path is not None else None
            else:
                caption = record.get(config.caption_field)
                query = caption if isinstance(caption, str) and caption.strip() else None
        batch.append((number, record, error, query))
        if len(batch) == config.batch_size:
            break
    return batch


def _process(batch: list, encoder, index: Index, k_search: int, config: RetrieveConfig, counts: dict) -> None:
    rows, inputs = [], []
    for position, (number, record, error, query) in enumerate(batch):
        counts["records"] += 1
        if query is not None and config.query == "image":
            query, error = query.result()
        if error is not None:
            record["retrieval_error"] = error
            counts["errors"] += 1
            log.warning("record %s (line %d): %s", record.get("id", "?"), number, error)
        elif query is None:
            counts["no_query"] += 1
        else:
            rows.append(position)
            inputs.append(query)
    if not inputs:
        return
    embeddings = encoder.encode(inputs, progress=False)
    scores, ids = index.search(embeddings, k_search)
    for position, row_scores, row_ids in zip(rows, scores.tolist(), ids.tolist()):
        _annotate(batch[position][1], row_scores, row_ids, index, config, counts)


def _jsonl_to_json(source: Path, target: Path) -> None:
    """Stream a JSONL file into a JSON list (atomically), then remove the JSONL."""
    tmp = target.with_name(target.name + ".tmp")
    with open(source, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        dst.write("[")
        for i, line in enumerate(src):
            dst.write(("," if i else "") + "\n" + line.rstrip("\n"))
        dst.write("\n]\n")
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, target)
    source.unlink()
