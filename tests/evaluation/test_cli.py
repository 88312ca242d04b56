"""``python -m tga_fast eval dsr`` in a subprocess: writes result.json + figure.png, logs bad data lines, and
fails clearly on a missing model path."""

import json
import os
import subprocess
import sys

import pytest

from tests.evaluation.conftest import write_eval_set
from tga_fast.evaluation import DSRResult


def _run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "tga_fast", "eval", "dsr", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.slow  # a CLI subprocess
def test_cli_eval_dsr(llava_dir, tmp_path):
    data = write_eval_set(tmp_path / "data", extra_lines=['{"broken'])
    out = tmp_path / "out"
    done = _run("--model", llava_dir, "--data", data, "--out", out, "--device", "cpu", "--max-new-tokens", "3",
                "--batch-size", "2", "--condition", "text", "--with-retrieved", "--keywords", "extended",
                "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "DSR" in done.stdout and "wrote" in done.stdout
    assert "line 5" in done.stderr or "skipped: 5" in done.stderr, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["records"] == {"file": "samples.jsonl", "count": 4}
    assert [row["line"] for row in result["settings"]["bad_lines"]] == [5]
    assert result["settings"]["condition"] == "text" and result["settings"]["with_retrieved"] is True
    assert (out / "figure.png").read_bytes()[:4] == b"\x89PNG"

    missing = _run("--model", tmp_path / "no-model", "--data", data, "--out", tmp_path / "out2")
    assert missing.returncode == 2
    assert "no-model does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_in_process_logit_judge_and_errors(llava_dir, tmp_path, capsys):
    from tga_fast.cli import main

    data = write_eval_set(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["eval", "dsr", "--model", str(llava_dir), "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--judge", "logit", "--threshold", "0", "--no-progress"]) == 0
    result = DSRResult.load(out).to_json()
    assert all(r["verdict"] and r["response"] == "" and 0 <= r["score"] <= 1 for r in result["records"])
    assert result["settings"]["judge"] == "logit:0" and "DSR 1.000" in capsys.readouterr().out
    assert result["environment"]["torch_threads"] >= 1 and result["environment"]["tga_fast"]

    # An existing result is never replaced silently: one line naming the file, before the model loads.
    again = ["eval", "dsr", "--model", str(llava_dir), "--data", str(data), "--out", str(out), "--device", "cpu",
             "--judge", "logit", "--threshold", "1", "--no-progress"]
    before = (out / "result.json").read_bytes()
    assert main(again) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'result.json'} already exists" in err and "--overwrite" in err
    assert (out / "result.json").read_bytes() == before
    assert main([*again, "--overwrite"]) == 0 and "DSR 0.000" in capsys.readouterr().out
    out = tmp_path / "other"

    family = tmp_path / "gpt2"
    family.mkdir()
    (family / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["eval", "dsr", "--model", str(family), "--data", str(data), "--out", str(out)]) == 2
    assert "unsupported model family 'gpt2'" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{}\n")
    assert main(["eval", "dsr", "--model", str(llava_dir), "--data", str(empty), "--out", str(out)]) == 2
    assert "no valid line" in capsys.readouterr().err


def test_cli_sampling_is_seeded(llava_dir, tmp_path):
    from tga_fast.cli import main

    data = write_eval_set(tmp_path / "data")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["eval", "dsr", "--model", str(llava_dir), "--data", str(data), "--out", str(out), "--device",
                     "cpu", "--condition", "text", "--max-new-tokens", "4", "--do-sample", "--temperature", "1.5",
                     "--seed", "3", "--no-progress"]) == 0
        runs.append(DSRResult.load(out).to_json())
    assert runs[0]["settings"]["generation_kwargs"] == {"do_sample": True, "temperature": 1.5, "top_p": 1.0}
    assert runs[0]["settings"]["seed"] == 3
    assert [r["response"] for r in runs[0]["records"]] == [r["response"] for r in runs[1]["records"]]
