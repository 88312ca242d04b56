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
A record without a query (text-only samples) is written unchanged. A bad record is written without
``retrieved`` but with ``retrieval_error`` (the reason), counted in ``errors`` and logged once with its id and
line: an image missing, unreadable, outside ``image_folder`` or not a path (``"image": 5``); a value that is not
an object (written as ``{"raw": value, ...}``); a line that is not UTF-8 or not JSON (written as
``{"retrieval_error": "line N: ..."}``). Bad records are passed through, never dropped, so output line i is input
record i (blank lines aside): the output stays aligned with the input, and an interrupted run resumes by count.

Files: the data and corpora are read with :func:`tga_fast.files.read_json_records` (bytes, per-line decoding, a
UTF-8 BOM ignored). An existing output is replaced only with ``overwrite=True`` (``--overwrite``); a ``.json``
output is written atomically at the end. See :mod:`tga_fast.retrieval.resumable` for what is refused on resume.
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

from tga_fast.errors import UserError, require_positive
from tga_fast.files import atomic_write, read_json_records, resolve_inside, write_json
from tga_fast.retrieval.corpus import dedupe, fingerprint, read_corpus
from tga_fast.retrieval.index import Index
from tga_fast.retrieval.resumable import ResumableJsonl, read_finished
from tga_fast.retrieval.self_match import choose
from tga_fast.sharding import Shard, order_parts, parse_shard, settings_difference

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
    index_dir: str | None = None  # default <out>.index (a shard: <its part>.index)
    backend: str = "auto"  # Index backend
    index_kind: str = "flat"  # "flat" (exact) or "ivf"
    batch_size: int = 256  # records per search batch (and per durable write)
    encoder_batch_size: int = 64
    device: str | None = None
    dtype: str | None = None
    workers: int = 4  # image-decoding threads
    progress: bool = True
    overwrite: bool = False
    shard: str | None = None  # "k/n": records k, k + n, ... into <out stem>.part-k-of-n.jsonl (tga_fast.sharding)

    def __post_init__(self):
        # Checked here, not at the first batch: a library caller gets the error before any work, the CLI exit 2.
        for name in ("batch_size", "encoder_batch_size", "top_k", "workers"):
            require_positive(getattr(self, name), f"{name} (--{name.replace('_', '-')})")
        for name, allowed in (("query", ("image", "caption")), ("self_match", ("half", "next", "keep")),
                              ("index_kind", ("flat", "ivf")), ("backend", ("auto", "faiss", "torch"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} (--{name.replace('_', '-')}) must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}")
        parse_shard(self.shard)


def _records(path: str | os.PathLike) -> Iterator[tuple[str, dict, str | None]]:
    """``(where, record, error)`` per record of a LLaVA .json (list) or .jsonl file; a line that cannot be read or
    a value that is not an object becomes a placeholder record with ``error`` set (see the module docstring)."""
    for line in read_json_records(path):
        if not line.ok:
            yield line.where, {}, line.error
        elif not isinstance(line.value, dict):
            yield line.where, {"raw": line.value}, f"a record must be a JSON object, got {type(line.value).__name__}"
        else:
            yield line.where, line.value, None


def _image_path(record: dict, folder: Path) -> tuple[Path | None, str | None]:
    """``(path, error)`` of the record's query image: ``(None, None)`` without one (text-only), an error for a
    value that is not a path or a path that leaves ``folder``."""
    image = record.get("image")
    if isinstance(image, list):  # multi-image records: the first image is the query
        if image and not isinstance(image[0], str):
            return None, f"image must be a path or a list of paths, got a list of {type(image[0]).__name__}"
        image = image[0] if image else None
    if image is None or image == "":
        return None, None
    if not isinstance(image, str):
        return None, f"image must be a path or a list of paths, got {type(image).__name__}"
    try:
        return resolve_inside(folder, image, what="image path"), None
    except ValueError as error:  # ../../x or an absolute path elsewhere: never read files outside the folder
        return None, str(error)


def _load(path: Path):
    from tga_fast.retrieval.encoders import load_image

    try:
        return load_image(path), None
    except FileNotFoundError:
        return None, f"image not found: {path}"
    except Exception as error:  # any decoding failure is this record's problem, not the run's
        return None, f"image unreadable: {path}: {type(error).__name__}: {error}"


def _build_or_load_index(config: RetrieveConfig, text_encoder_path: str, text_encoder=None) -> Index:
    """The corpus index of ``index_dir``, reused when it was built from the same corpora and encoder, else built.
    ``text_encoder``: an encoder already loaded, or a callable returning one (loaded only when the index must be
    built, after the corpora were read, so a bad corpus line is reported before any model is loaded)."""
    shard = parse_shard(config.shard)
    # Each shard keeps its own default cache beside its part: shards building one folder at once would race (a
    # save removes index.json before rewriting it). One --index-dir built beforehand can be shared.
    index_dir = Path(config.index_dir or f"{config.out if shard is None else shard.part_file(config.out)}.index")
    source = {"corpus": fingerprint(config.corpus), "toxic_corpus": fingerprint(config.toxic_corpus)
              if config.toxic_corpus else None, "text_encoder": str(Path(text_encoder_path).resolve()),
              "text_field": config.text_field, "kind": config.index_kind}
    source_path = index_dir / "source.json"
    if (index_dir / "index.json").exists() and source_path.exists():
        try:
            recorded = json.loads(source_path.read_text(encoding="utf-8"))
        except ValueError:  # a damaged cache is rebuilt, not trusted
            recorded = None
        if recorded == source:
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
    if callable(text_encoder):
        text_encoder = text_encoder()
    if text_encoder is None:
        from tga_fast.retrieval.encoders import TextEncoder

        text_encoder = TextEncoder(text_encoder_path, device=config.device, dtype=config.dtype)
    embeddings = text_encoder.encode(texts, batch_size=config.encoder_batch_size * 4, progress=config.progress)
    index = Index.build(embeddings, config.backend, kind=config.index_kind, texts=texts, ids=ids,
                        **({"device": config.device} if config.device else {}))
    index.save(index_dir)
    write_json(source_path, source)
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


def _check_inputs(config: RetrieveConfig, text_encoder_path: str) -> None:
    """Every input named by the options exists, before any fingerprint, model or output is touched: a missing
    file is one line naming the option and the file, not a traceback from deep inside."""
    from tga_fast.retrieval.encoders import check_model_folder, resolve_device, resolve_dtype

    for flag, path in (("--data", config.data), ("--corpus", config.corpus), ("--toxic-corpus", config.toxic_corpus)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path} does not exist or is not a file")
    if config.query == "image":
        if not Path(config.image_folder).is_dir():
            raise FileNotFoundError(f"--image-folder {config.image_folder} does not exist or is not a folder")
        check_model_folder(config.image_encoder, "--image-encoder")
    check_model_folder(text_encoder_path, "--text-encoder" if config.text_encoder else "--image-encoder")
    resolve_dtype(config.dtype, resolve_device(config.device))


def retrieve(config: RetrieveConfig) -> dict:
    """Run the builder; returns the counts (also kept in ``<out>.progress.json``). Resumes an interrupted run of
    the same inputs and options; a finished one returns at once.

    Raises:
        UserError / FileNotFoundError: a bad option, a missing input or encoder folder, an output that exists
            without ``overwrite``, or a progress sidecar whose output is gone or damaged (each names the file and
            the fix).
    """
    if config.query == "image" and not config.image_encoder:
        raise UserError("--query image needs --image-encoder (a local CLIP/SigLIP folder)")
    text_encoder_path = config.text_encoder or config.image_encoder
    if not text_encoder_path:
        raise UserError("--query caption needs --text-encoder (a local folder)")
    _check_inputs(config, text_encoder_path)
    if config.query == "image" and config.text_encoder and config.text_encoder != config.image_encoder:
        log.warning("text_encoder differs from image_encoder: the two must embed into the same space")
    shard = parse_shard(config.shard)
    out = Path(config.out) if shard is None else shard.part_file(config.out)
    work_path = _work_path(config)
    options = {k: v for k, v in asdict(config).items()
               if k in ("query", "top_k", "self_match", "caption_field", "text_field", "index_kind", "image_folder")}
    fingerprint_ = {"data": fingerprint(config.data), "corpus": fingerprint(config.corpus),
                    "toxic_corpus": fingerprint(config.toxic_corpus) if config.toxic_corpus else None,
                    "image_encoder": config.image_encoder, "text_encoder": text_encoder_path, **options}
    if shard is not None:  # only then: an unsharded run's sidecar stays what earlier versions wrote
        fingerprint_["shard"] = shard.to_json()
    counts = {"records": 0, "retrieved": 0, "no_query": 0, "errors": 0, "self_match_half": 0, "self_match_next": 0,
              "retrieved_toxic": 0}
    writer = ResumableJsonl(work_path, fingerprint_, overwrite=config.overwrite, target=out)
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

            loaded = []

            def text_encoder():  # one encoder for the corpus and the captions, loaded once
                if not loaded:
                    loaded.append(TextEncoder(text_encoder_path, device=config.device, dtype=config.dtype,
                                              batch_size=config.encoder_batch_size, progress=False))
                return loaded[0]

            index = _build_or_load_index(config, text_encoder_path, text_encoder)
            encoder = text_encoder()
        k_search = min(index.ntotal, config.top_k + (NEXT_MARGIN if config.self_match == "next" else 0))
        folder = Path(config.image_folder)
        seen = _Counted(_records(config.data))
        selected = seen if shard is None else shard.select(seen)
        records = (item for position, item in enumerate(selected) if position >= writer.done)
        with ThreadPoolExecutor(config.workers) as pool, \
                tqdm(desc="retrieve", unit="record", initial=writer.done, disable=not config.progress) as bar:
            pending = _next_batch(records, config, folder, pool)
            while pending:
                batch = pending
                pending = _next_batch(records, config, folder, pool)  # decode the next batch meanwhile
                _process(batch, encoder, index, k_search, config, counts)
                writer.write_batch([record for _, record, _, _ in batch], counts)
                bar.update(len(batch))
        if shard is not None:  # what `tga-fast merge` checks the parts against: every record once
            counts["input_records"] = seen.count
        writer.finish(counts)
    if work_path != out:
        _jsonl_to_json(work_path, out)
    log.info("retrieval done: %s", counts)
    return counts


def _work_path(config: RetrieveConfig) -> Path:
    """The JSONL the run streams into: ``out`` itself, ``<out>.partial.jsonl`` for a ``.json`` out, or the shard's
    part (always JSONL, whatever ``out`` is)."""
    shard = parse_shard(config.shard)
    if shard is not None:
        return shard.part_file(config.out)
    out = Path(config.out)
    return out if out.suffix.lower() != ".json" else out.with_name(out.name + ".partial.jsonl")


class _Counted:
    """Iterates ``items`` and counts them: a shard reads every input record, so at its end ``count`` is the size
    of the whole input (what the parts of one run must agree on)."""

    def __init__(self, items):
        self.items, self.count = items, 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item


def _next_batch(records, config: RetrieveConfig, folder: Path, pool) -> list:
    """Up to ``batch_size`` of ``(where, record, error, query)``, where query is a future of (image, error), a
    caption string, or None (no query)."""
    batch = []
    for where, record, error in records:
        query = None
        if error is None:
            if config.query == "image":
                path, error = _image_path(record, folder)
                query = pool.submit(_load, path) if path is not None else None
            else:
                caption = record.get(config.caption_field)
                query = caption if isinstance(caption, str) and caption.strip() else None
        batch.append((where, record, error, query))
        if len(batch) == config.batch_size:
            break
    return batch


def _process(batch: list, encoder, index: Index, k_search: int, config: RetrieveConfig, counts: dict) -> None:
    rows, inputs = [], []
    for position, (where, record, error, query) in enumerate(batch):
        counts["records"] += 1
        if query is not None and config.query == "image":
            query, error = query.result()
        if error is not None:
            # A record without an id is found again by its line: the placeholder of an unreadable line has none.
            record["retrieval_error"] = error if "id" in record else f"{where}: {error}"
            counts["errors"] += 1
            log.warning("%s, %s (record %s): %s", config.data, where, record.get("id", "?"), error)
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
    """Stream a JSONL file into a JSON list (atomically: the old target or the whole new one), then remove the
    JSONL. Replacing ``target`` was settled when the run started (``ResumableJsonl`` refuses a foreign one)."""
    with open(source, encoding="utf-8") as src, atomic_write(target, "w", overwrite=True) as dst:
        _write_json_list(src, dst)
    source.unlink()


def _write_json_list(lines, handle) -> None:
    """JSONL lines (each one record) written to ``handle`` as a JSON list, one record a line."""
    handle.write("[")
    for i, line in enumerate(lines):
        handle.write(("," if i else "") + "\n" + line.rstrip("\n"))
    handle.write("\n]\n")


def merge_retrieved(parts, out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Joins the parts of a sharded ``retrieve`` run (``--shard k/n``) into ``out`` (.jsonl, or a .json list), in
    input order: exactly what one process would have written. Returns the summed counts.

    Every part must be finished and unchanged (its ``.progress.json``), all ``n`` parts of one run given once each,
    made from the same inputs and options; each part must hold exactly its share of the input's records.

    Raises:
        UserError: a part missing, given twice, unfinished or changed, parts of different ``n`` or settings, or
            ``out`` existing without ``overwrite``.
    """
    from tga_fast.files.atomic import check_writable

    out = check_writable(out, overwrite=overwrite)
    names = [str(p) for p in parts]
    states = [read_finished(p) for p in parts]
    shards = []
    for name, state in zip(names, states):
        recorded = (state.get("fingerprint") or {}).get("shard")
        if not isinstance(recorded, dict):
            raise UserError(f"{name} is the output of an unsharded run (no --shard): there is nothing to merge")
        if not {"index", "count"} <= set(recorded) or not isinstance(state["counts"].get("input_records"), int):
            raise UserError(f"{name}.progress.json lacks the shard or the input count (a hand-edited sidecar?)")
        shards.append(Shard(recorded["index"], recorded["count"]))
    ordered = order_parts(list(zip(shards, zip(names, states))), names)
    first_name, first = ordered[0]
    total = first["counts"].get("input_records")
    for name, state in ordered[1:]:
        differ = settings_difference(first["fingerprint"], state["fingerprint"])
        if differ:
            raise UserError(f"{name} was made with other inputs or options than {first_name} (differs in: "
                            f"{', '.join(differ)}): merge the parts of one run")
        if state["counts"].get("input_records") != total:
            raise UserError(f"{name} read {state['counts'].get('input_records')} input records but {first_name} "
                            f"read {total}: the data changed between the shards' runs")
    count = len(ordered)
    for k, (name, state) in enumerate(ordered):
        if state["records"] != Shard(k, count).size(total):
            raise UserError(f"{name} holds {state['records']} records, but shard {k}/{count} of {total} input "
                            f"records has {Shard(k, count).size(total)}")
    handles = [open(name, encoding="utf-8") for name, _ in ordered]
    try:
        lines = (handles[position % count].readline() for position in range(total))
        with atomic_write(out, "w", overwrite=overwrite) as dst:
            if out.suffix.lower() == ".json":
                _write_json_list(lines, dst)
            else:
                dst.writelines(lines)
    finally:
        for handle in handles:
            handle.close()
    counts = {}
    for _, state in ordered:
        for key, value in state["counts"].items():
            if key != "input_records":
                counts[key] = counts.get(key, 0) + value
    log.info("merged %d parts into %s: %s", count, out, counts)
    return counts
