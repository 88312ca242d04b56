"""Files the way every part of tga_fast reads and writes them: one JSONL/JSON record reader, atomic writes that
never replace an existing output silently, and paths that stay inside their folder."""

from tga_fast.files.atomic import atomic_write, write_json, write_text
from tga_fast.files.paths import resolve_inside
from tga_fast.files.records import LineRecord, read_json_records, read_jsonl

__all__ = ["LineRecord", "atomic_write", "read_json_records", "read_jsonl", "resolve_inside", "write_json",
           "write_text"]
