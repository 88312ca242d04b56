"""Training configs: defaults from METHOD.md, parsing from argv / JSON / YAML, validation naming the field."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from tests.training.train_helpers import ROOT
from tga_fast.training.config import (
    DataConfig,
    ModelConfig,
    TGAConfig,
    TrainConfig,
    default_target_layers,
    parse_config,
    resolve_target_layers,
)

CONFIGS = ROOT / "configs"


def test_defaults_are_the_papers():
    tga = TGAConfig()
    assert (tga.pair_weight, tga.hinge_weight, tga.pair_power, tga.hinge_power) == (0.25, 0.1, 1.0, 2.0)
    assert tga.align and not tga.faithful_reference and tga.lm_loss_weight == 1.0
    assert DataConfig().max_length == 1200


def test_target_layers_default_and_depth():
    assert default_target_layers(32) == list(range(10, 19))  # the released code's 10..18
    assert default_target_layers(40) == list(range(13, 24))  # scaled: 12.5 -> 13, 22.5 -> 23
    assert default_target_layers(4) == [1, 2]  # 1.25 -> 1, 2.25 -> 2
    assert resolve_target_layers(TGAConfig(), 32) == list(range(10, 19))
    assert resolve_target_layers(TGAConfig(target_layers=[3, 4]), 4) == [3, 4]
    with pytest.raises(ValueError, match=r"TGAConfig\.target_layers \[5\] out of range.*0\.\.4"):
        resolve_target_layers(TGAConfig(target_layers=[3, 5]), 4)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: TGAConfig(pair_weight=-1), "TGAConfig.pair_weight"),
        (lambda: TGAConfig(hinge_power=-2), "TGAConfig.hinge_power"),
        (lambda: TGAConfig(lm_loss_weight=-1), "TGAConfig.lm_loss_weight"),
        (lambda: TGAConfig(target_layers=[]), "TGAConfig.target_layers"),
        (lambda: TGAConfig(target_layers=[-1, 1]), "TGAConfig.target_layers"),
        (lambda: TGAConfig(target_layers=[2, 2]), "TGAConfig.target_layers"),
        (lambda: TGAConfig(teacher_template="plain"), "TGAConfig.teacher_template"),
        (lambda: ModelConfig(dtype="float8"), "ModelConfig.dtype"),
        (lambda: ModelConfig(attn_implementation="fast"), "ModelConfig.attn_implementation"),
        (lambda: ModelConfig(load_in_4bit=True, train_llm=True), "ModelConfig.load_in_4bit"),
        (lambda: ModelConfig(bnb_4bit_quant_type="int4"), "ModelConfig.bnb_4bit_quant_type"),
        (lambda: ModelConfig(projector_path="/no/such/projector.safetensors"), "ModelConfig.projector_path"),
        (lambda: ModelConfig().require_model(), "ModelConfig.model_name_or_path"),
        (lambda: DataConfig(max_length=0), "DataConfig.max_length"),
        (lambda: DataConfig().require_data(), "DataConfig.data_path"),
        (lambda: DataConfig(data_path="/no/such.jsonl").require_data(), "DataConfig.data_path"),
        (lambda: DataConfig(text_replay_ratio=0.2), "DataConfig.text_replay_ratio"),
        (lambda: DataConfig(text_replay_path="t.jsonl", text_replay_ratio=1.0), "DataConfig.text_replay_ratio"),
        (lambda: DataConfig(data_path=__file__, image_folder="/no/such/folder").require_data(), "DataConfig.image_folder"),
        (lambda: DataConfig(data_path=__file__, text_replay_path="/no/such.jsonl").require_data(),
         "DataConfig.text_replay_path"),
        (lambda: DataConfig(data_path=__file__, chat_template="/no/such.jinja").require_data(), "DataConfig.chat_template"),
        (lambda: TrainConfig(output_dir="o", remove_unused_columns=True), "TrainConfig.remove_unused_columns"),
        (
            lambda: TrainConfig(output_dir="o", activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True}),
            "TrainConfig.activation_checkpointing_kwargs",
        ),
    ],
)
def test_validation_names_the_field(make, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()


def test_checkpointing_is_non_reentrant():
    config = TrainConfig(output_dir="o", gradient_checkpointing=True)  # the deprecated alias too
    assert config.activation_checkpointing and config.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert TrainConfig(output_dir="o").remove_unused_columns is False
    assert TrainConfig(output_dir="o").ddp_find_unused_parameters is False  # also without checkpointing


def test_parse_argv():
    model, data, tga, train = parse_config(
        ["--model_name_or_path", "m", "--data_path", "d.jsonl", "--target_layers", "1", "2", "--faithful_reference",
         "--output_dir", "out", "--optim", "adamw_torch", "--max_steps", "3"]
    )  # fmt: skip
    assert model.model_name_or_path == "m" and data.data_path == "d.jsonl"
    assert tga.target_layers == [1, 2] and tga.faithful_reference
    assert train.max_steps == 3 and train.output_dir == "out" and train.remove_unused_columns is False
    with pytest.raises(ValueError, match="unknown options"):
        parse_config(["--output_dir", "out", "--no_such_option", "1"])


# What a stage preset must state, not inherit (docs/training.md says where each value comes from).
EXPLICIT = (
    {f.name for f in fields(TGAConfig)}
    | {"train_llm", "use_retrieved", "max_length", "chat_template", "learning_rate", "per_device_train_batch_size",
       "num_train_epochs", "lr_scheduler_type", "warmup_steps", "activation_checkpointing", "bf16"}
)


@pytest.mark.parametrize("name", ["stage1_pretrain.json", "stage2_finetune.json", "stage2_projector_only.json"])
def test_presets_state_every_tga_option(name):
    values = json.loads((CONFIGS / name).read_text())
    assert EXPLICIT <= set(values), sorted(EXPLICIT - set(values))
    assert values["align"] and values["use_retrieved"] and values["target_layers"] is None
    assert (values["pair_weight"], values["hinge_weight"], values["pair_power"], values["hinge_power"]) == (0.25, 0.1, 1, 2)
    assert not values["faithful_reference"] and values["lm_loss_weight"] == 1


def test_presets_parse_and_match_the_method(tmp_path):
    import yaml

    assert yaml.safe_load((CONFIGS / "stage1_pretrain.yaml").read_text()) == json.loads(
        (CONFIGS / "stage1_pretrain.json").read_text()
    )
    stage1 = parse_config([str(CONFIGS / "stage1_pretrain.json"), "--output_dir", str(tmp_path), "--use_cpu", "true"])
    yaml_stage1 = parse_config([str(CONFIGS / "stage1_pretrain.yaml"), "--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert stage1[:3] == yaml_stage1[:3]
    assert stage1[3].to_dict() == yaml_stage1[3].to_dict()
    model, data, tga, train = stage1
    assert not model.train_llm and train.learning_rate == 1e-3 and train.per_device_train_batch_size == 32
    assert tga.align and data.use_retrieved and tga.target_layers is None and data.max_length == 2048
    for name in ("stage2_finetune.json", "stage2_projector_only.json"):
        model, data, _, train = parse_config([str(CONFIGS / name), "--output_dir", str(tmp_path), "--use_cpu", "true"])
        assert model.train_llm == (name == "stage2_finetune.json")
        assert train.learning_rate == 2e-6 and train.per_device_train_batch_size == 4 and train.num_train_epochs == 1
        assert train.lr_scheduler_type == "cosine" and train.warmup_steps == 0.03
        assert data.max_length == 1200 and train.activation_checkpointing


def test_preset_overrides_and_launcher_arguments(tmp_path):
    preset = str(CONFIGS / "stage2_finetune.json")
    # the deepspeed launcher puts --local_rank first; options after the preset override it
    model, _, _, train = parse_config(["--local_rank=0", preset, "--output_dir", str(tmp_path), "--use_cpu", "true", "--learning_rate", "5e-6"])
    assert model.train_llm and train.learning_rate == 5e-6
    _, _, _, train = parse_config(["--output_dir", str(tmp_path), "--use_cpu", "true", "--config", preset, "--per_device_train_batch_size", "2"])
    assert train.per_device_train_batch_size == 2 and train.learning_rate == 2e-6
    # the launch line: --deepspeed <json> before the preset (an option's .json value is not the preset)
    zero3 = str(CONFIGS / "deepspeed" / "zero3.json")
    model, _, _, train = parse_config(["--local_rank=0", "--deepspeed", zero3, preset, "--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert model.train_llm and train.deepspeed == zero3 and train.learning_rate == 2e-6
    # --option=value spellings of .json values are values too, not the preset
    model, data, _, train = parse_config(
        [f"--deepspeed={zero3}", preset, "--data_path=data.json", "--output_dir", str(tmp_path), "--use_cpu", "true"]
    )
    assert train.deepspeed == zero3 and data.data_path == "data.json" and model.train_llm
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 1e-3, "pair_wieght": 0.5}))
    with pytest.raises(ValueError, match="pair_wieght"):
        parse_config([str(bad)])


@pytest.mark.parametrize("name, stage", [("zero2.json", 2), ("zero3.json", 3), ("zero3_offload.json", 3)])
def test_deepspeed_configs_leave_batch_and_precision_to_the_trainer(name, stage):
    config = json.loads((CONFIGS / "deepspeed" / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    if "offload" in name:
        assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
        assert all(value == "auto" for value in config["optimizer"]["params"].values())
