"""One registry and one runner for the five analyses: the CLI's flags come from each analysis' options dataclass;
``batch_size < 1`` is a named error everywhere; an image that stops decoding is a skipped sample; no backend is
switched; every user error of ``analyze`` is one stderr line and exit code 2."""

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tga_fast.analysis import ANALYSES, RESULTS, ModalitySimilarityResult, SafetyLayersOptions, run_analysis
from tga_fast.analysis import safety_layers
from tga_fast.cli import build_parser, main
from tga_fast.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
PAPER_ORDER = ["safety_layers", "attention_share", "knockout_sweep", "modality_similarity", "steering_sweep"]


def test_every_analysis_is_registered_with_its_result_and_options():
    assert list(ANALYSES) == PAPER_ORDER and list(RESULTS) == PAPER_ORDER
    parser = build_parser()
    for entry in ANALYSES.values():
        assert entry.result.kind == entry.name and dataclasses.is_dataclass(entry.options)
        args = parser.parse_args(["analyze", entry.name, "--model", "m", "--data", "d", "--out", "o"])
        for field in dataclasses.fields(entry.options):  # every option is a flag, its default the dataclass'
            assert getattr(args, field.name) == field.default
    args = parser.parse_args(["analyze", "knockout_sweep", "--model", "m", "--data", "d", "--out", "o",
                              "--window", "2", "--variants", "skip", "--judge", "logit"])
    assert (args.window, args.variants, args.judge) == (2, ["skip"], "logit")
    with pytest.raises(SystemExit):  # an option of another analysis is refused, not ignored
        parser.parse_args(["analyze", "safety_layers", "--model", "m", "--data", "d", "--out", "o", "--window", "2"])


def test_the_runner_calls_the_analysis_with_its_options(llava, samples):
    model, processor = llava
    options = SafetyLayersOptions(condition="text", top_k=3)
    ran = run_analysis("safety_layers", model, processor, samples, options, batch_size=2, progress=False)
    direct = safety_layers(model, processor, samples, top_k=3, batch_size=2, progress=False)
    assert ran.to_json()["samples"] == direct.to_json()["samples"] and ran.settings["top_k"] == 3
    with pytest.raises(TypeError, match="SafetyLayersOptions"):
        run_analysis("attention_share", model, processor, samples, options)
    with pytest.raises(ValueError, match="unknown analysis"):
        run_analysis("nothing", model, processor, samples)


@pytest.mark.parametrize("name", PAPER_ORDER)
@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_below_one_is_a_named_error_in_every_analysis(llava, samples, name, batch_size):
    model, processor = llava
    with pytest.raises(UserError, match="batch_size must be a whole number >= 1"):
        run_analysis(name, model, processor, samples, batch_size=batch_size, progress=False)


def test_an_image_that_breaks_during_the_run_is_a_skipped_sample(llava, tmp_path):
    from tests.analysis.conftest import write_eval_set
    from tga_fast.evaluation.data import load_eval_set

    model, processor = llava
    samples = load_eval_set(write_eval_set(tmp_path)).samples
    broken = samples[1].image_path
    broken.write_bytes(broken.read_bytes()[:100])  # a valid PNG header, cut data: replaced on disk mid-run
    result = run_analysis("modality_similarity", model, processor, samples, batch_size=2, progress=False)
    assert [row["id"] for row in result.samples] == ["knife", "dog", "cup", "blade"]
    assert [s["id"] for s in result.skipped] == ["pills"] and "could not be decoded" in result.skipped[0]["reason"]
    out = result.save(tmp_path / "out")
    assert ModalitySimilarityResult.load(out).skipped[0]["id"] == "pills"
    image_layers = run_analysis("safety_layers", model, processor, samples, SafetyLayersOptions(condition="image"),
                                batch_size=8, progress=False)
    assert "pills" not in [row["id"] for row in image_layers.samples]
    assert "pills" in [s["id"] for s in image_layers.skipped]
    steered = run_analysis("steering_sweep", model, processor, samples, ANALYSES["steering_sweep"].options(
        window=4, max_new_tokens=2), batch_size=2, progress=False)
    assert [row["id"] for row in steered.samples] == ["knife", "dog", "blade"]
    assert steered.baseline["total"] == 3 and "pills" in [s["id"] for s in steered.skipped]


@pytest.mark.slow  # a fresh interpreter
def test_no_backend_is_switched(tmp_path):
    """Importing the analyses and evaluation, and saving their figures, leaves a user's backend as it was."""
    script = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("svg")
        import tga_fast.analysis, tga_fast.evaluation, tga_fast.toy.report
        from tga_fast.analysis import AttentionShareResult
        from tga_fast.evaluation import DSRResult, SampleRecord
        AttentionShareResult([1], [0.5], [0.0], [0.5], [0.5], 0.1, [], [], {{}}).save({str(tmp_path / 'a')!r})
        DSRResult.from_records([SampleRecord("a", "x", True, "p", "no", True)]).save({str(tmp_path / 'd')!r})
        tga_fast.toy.report.plot_curve({str(tmp_path / 'c.png')!r}, {{"a": [1, 2]}}, "x", "y", "t")
        print(matplotlib.get_backend())
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().lower() == "svg"
    assert (tmp_path / "a" / "figure.png").read_bytes()[:4] == b"\x89PNG"


def test_analyze_user_errors_are_one_line_exit_2(tmp_path, capsys):
    from tests.analysis.conftest import write_eval_set

    data = write_eval_set(tmp_path / "data")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "result.json").write_text("{}")
    common = ["--model", str(tmp_path / "no-model"), "--data", str(data)]
    cases = [
        (["analyze", "safety_layers", *common, "--out", str(tmp_path / "o"), "--batch-size", "-1"],
         "--batch-size must be a whole number >= 1, got -1"),
        (["analyze", "knockout_sweep", *common, "--out", str(tmp_path / "o"), "--window", "0"],
         "--window must be a whole number >= 1, got 0"),
        (["analyze", "steering_sweep", *common, "--out", str(tmp_path / "o"), "--max-new-tokens", "0"],
         "--max-new-tokens must be a whole number >= 1"),
        (["analyze", "attention_share", *common, "--out", str(tmp_path / "done")],
         f"{tmp_path / 'done' / 'result.json'} already exists"),
        (["analyze", "attention_share", "--model", "m", "--data", str(tmp_path / "none.jsonl"),
          "--out", str(tmp_path / "o")], "none.jsonl does not exist"),
        (["analyze", "attention_share", *common, "--out", str(tmp_path / "o")], "no-model"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert (tmp_path / "done" / "result.json").read_text() == "{}" and not (tmp_path / "o").exists()
