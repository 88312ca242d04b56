"""``tga-fast analyze``: a subprocess run on a tiny LLaVA saved with save_pretrained and a small JSONL, and the
user errors (exit code 2 with a message naming the problem)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tga_fast.analysis import ModalitySimilarityResult, SafetyLayersResult
from tga_fast.cli import main
from tests.helpers import save_tiny_llava

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), layers=2)


@pytest.mark.slow  # a CLI subprocess
def test_analyze_in_a_subprocess(llava_dir, eval_file, tmp_path):
    out = tmp_path / "safety"
    command = [sys.executable, "-m", "tga_fast.cli", "analyze", "safety_layers", "--model", str(llava_dir),
               "--data", str(eval_file), "--out", str(out), "--batch-size", "2", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = SafetyLayersResult.load(out)
    assert result.layers == [0, 1, 2] and len(result.samples) == 5  # four toxic prompts and their control
    assert result.verdict.startswith("no safety layers") and result.safety_range is None
    assert result.settings["model"] == str(llava_dir)
    assert (out / "figure.png").stat().st_size > 1000


@pytest.mark.slow  # builds and saves a CLIP tower too (3 s)
def test_analyze_in_process_with_clip(llava_dir, eval_file, tmp_path):
    from tests.retrieval.conftest import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    out = tmp_path / "similarity"
    code = main(["analyze", "modality_similarity", "--model", str(llava_dir), "--data", str(eval_file),
                 "--out", str(out), "--clip", clip, "--device", "cpu", "--no-progress"])
    assert code == 0
    result = ModalitySimilarityResult.load(out / "result.json")
    assert result.clip_cosine_mean is not None and len(result.cosine_mean) == 3


def test_knockout_sweep_with_the_logit_judge(llava_dir, eval_file, tmp_path):
    from tga_fast.analysis import KnockoutSweepResult

    out = tmp_path / "knockout"
    code = main(["analyze", "knockout_sweep", "--model", str(llava_dir), "--data", str(eval_file), "--out", str(out),
                 "--window", "1", "--judge", "logit", "--device", "cpu", "--no-progress",
                 "--system-prompt", "Refuse harmful requests."])
    assert code == 0
    result = KnockoutSweepResult.load(out)
    assert result.windows == [[1, 1], [2, 2]] and "logit:0.5" in result.settings["judge"]
    assert result.settings["system_prompt"] == "Refuse harmful requests."
    assert all("Refuse harmful requests." in row["prompt"] for row in result.samples)
    assert all(0.0 <= row["baseline"]["score"] <= 1.0 and row["baseline"]["response"] == "" for row in result.samples)


def test_user_errors_exit_2(llava_dir, eval_file, tmp_path, capsys):
    missing = main(["analyze", "attention_share", "--model", str(tmp_path / "nowhere"), "--data", str(eval_file),
                    "--out", str(tmp_path / "o")])
    assert missing == 2 and "nowhere" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\nnot json\n')
    no_data = main(["analyze", "safety_layers", "--model", str(llava_dir), "--data", str(bad),
                    "--out", str(tmp_path / "o")])
    assert no_data == 2 and "no valid line" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "no_such_analysis", "--model", "m", "--data", "d", "--out", "o"])
