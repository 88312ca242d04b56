"""An offline word-level tokenizer over the world's vocabulary, wrapped in ``PreTrainedTokenizerFast`` with a
LLaVA-1.5-like chat template ("USER: ... ASSISTANT: ..."), so transformers' LLaVA processor and every tga_fast
span helper (offset mappings) work on it. Words and punctuation are separate tokens; whitespace is dropped.
"""

from __future__ import annotations

from tga_fast.models.tiny import CHAT_TEMPLATE

IMAGE_TOKEN = "<image>"
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN]
TEMPLATE_WORDS = ["USER", "ASSISTANT", "SYSTEM", ":", "Retrieved", "Text", ".", ",", "?"]


def build_tokenizer(words):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is ``SPECIALS`` + the chat template's words + ``words``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {}
    for token in [*SPECIALS, *TEMPLATE_WORDS, *sorted(set(words))]:
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+ : words and punctuation, with offsets
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
