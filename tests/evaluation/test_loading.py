"""load_model: local HF folders only, supported families only, processor vs tokenizer, bitsandbytes options."""

import importlib.util
import json

import pytest
import torch

from tga_fast.models import supported_model_types
from tga_fast.models.loading import load_model
from tga_fast.models.tiny import tiny_llm, tiny_vlm


def test_llava_loads_with_processor_and_same_weights(llava_dir):
    model, processor = load_model(llava_dir, device="cpu", dtype="bfloat16")
    assert type(model).__name__ == "LlavaForConditionalGeneration" and not model.training
    assert type(processor).__name__ == "LlavaProcessor" and processor.chat_template
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    original, _ = tiny_vlm("llava", "llama", layers=2)  # what the llava_dir fixture saved (same seed)
    state = original.state_dict()
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(v, state[k].to(torch.bfloat16)) for k, v in loaded.items())


def test_llm_loads_with_tokenizer(tmp_path):
    model, tokenizer = tiny_llm("mistral", layers=1, hidden=32)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(tmp_path, device="cpu")
    from transformers import PreTrainedTokenizerBase

    assert isinstance(loaded_tokenizer, PreTrainedTokenizerBase) and not hasattr(loaded_tokenizer, "image_processor")
    assert loaded_tokenizer("I'm sorry").input_ids == tokenizer("I'm sorry").input_ids
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        load_model(tmp_path / "no/such/model")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match=r"unsupported model family 'gpt2'.*" + ".*".join(supported_model_types())):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="quantization"):
        load_model(tmp_path, quantization="3bit")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load_model(tmp_path, device="cuda")


@pytest.mark.slow  # bitsandbytes 4-bit load and save
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_4bit_keeps_vision_projector_and_head(llava_dir):
    try:
        model, _ = load_model(llava_dir, device="cpu", quantization="4bit")
    except Exception as error:  # bitsandbytes without a CPU backend
        pytest.skip(f"bitsandbytes 4-bit on CPU: {error}")
    quantized = [name for name, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantized and all(".language_model.layers." in name for name in quantized)
    assert type(model.lm_head) is torch.nn.Linear
    assert all(type(m).__name__ != "Linear4bit" for m in model.model.vision_tower.modules())


def test_missing_folder_never_reaches_the_hub(tmp_path, monkeypatch):
    """A folder that does not exist is a FileNotFoundError saying so, even when it looks like a Hub id (it used to
    reach the Hub client: HFValidationError "Repo id ..."); nothing asks the Hub."""
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"llava-hf/llava-1.5-7b-hf does not exist.*hub:llava-hf/llava-1.5-7b-hf"):
        load_model("llava-hf/llava-1.5-7b-hf", device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "/abs/../no such folder", device="cpu")


def test_hub_only_when_asked_and_reachable(monkeypatch):
    from tga_fast.errors import UserError
    from tga_fast.models.loading import resolve_model_source

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_model_source("hub:llava-hf/llava-1.5-7b-hf") == ("llava-hf/llava-1.5-7b-hf", True)
    with pytest.raises(UserError, match="hub:<org>/<name>"):
        resolve_model_source("hub:../../etc")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        load_model("hub:llava-hf/llava-1.5-7b-hf", device="cpu")


@pytest.mark.parametrize("trust", [False, True])
def test_remote_code_only_when_asked_and_local_files_only(llava_dir, monkeypatch, trust):
    """Every from_pretrained call of a local folder gets local_files_only=True and trust_remote_code only when the
    user asked (training used to pass its own default to every call)."""
    import transformers

    seen = []
    original = transformers.AutoConfig.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(spy))
    load_model(llava_dir, device="cpu", trust_remote_code=trust)
    assert seen and all(k.get("local_files_only") is True and k.get("trust_remote_code", False) is trust for k in seen)
