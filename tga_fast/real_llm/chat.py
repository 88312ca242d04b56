"""SmolLM2's chat format for the LVLM built from it.

SmolLM2-135M-Instruct ships a ChatML template that prints each message's ``content`` as a string (and adds its
default system prompt when the conversation has none). LLaVA's processor renders content lists (text and image
items), so :data:`CHATML_TEMPLATE` is the same template extended to content lists: an image item becomes
``<image>\\n``. For string contents the two render the same text (``tests/real_llm`` checks it against the shipped
template), so the safety tuning (text) and the LVLM (images) see one format.
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\\n' }}{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def with_image_token(tokenizer):
    """``tokenizer`` with ``<image>`` added as a special token (``tokenizer.image_token``, what LLaVA's processor
    expands into the image's tokens) and :data:`CHATML_TEMPLATE`; modified in place and returned.

    The new token gets the next id (49152 for SmolLM2): the LLM's embedding table must grow by one row before the
    LVLM is assembled (:func:`grow_embeddings`); that row is never read, as LLaVA replaces the image token's
    embeddings with the projected image features.
    """
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.image_token = IMAGE_TOKEN  # LLaVA's processor reads it; saved with the tokenizer's config
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def grow_embeddings(llm, tokenizer) -> None:
    """Resizes ``llm``'s (tied) embeddings to ``len(tokenizer)`` rows when the tokenizer gained tokens."""
    if llm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
