"""A character-level tokenizer that `AutoTokenizer.from_pretrained(dir)` loads offline.

Every printable ASCII character and the newline is one token, so any prompt (the task's or a user's)
tokenizes without unknowns. BOS is prepended by the tokenizer itself, and the chat template passes
message contents through unchanged, so `/v1/completions` and `/v1/chat/completions` see the same ids.
"""

from __future__ import annotations

from pathlib import Path

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))

# Message contents are concatenated as they are: the task has no roles, and this keeps the chat
# endpoint equivalent to the completion endpoint for a single user message.
CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"


def vocabulary() -> dict[str, int]:
    tokens = list(SPECIAL_TOKENS) + list(CHARACTERS)
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer():
    """A `PreTrainedTokenizerFast` over single characters (imports transformers lazily)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # Fuse joins the characters back without the spaces WordLevel would put between them.
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(directory: str | Path):
    tok = build_tokenizer()
    tok.save_pretrained(str(directory))
    return tok
