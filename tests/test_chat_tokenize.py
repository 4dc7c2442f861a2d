"""Loss masks token by token for Qwen3- and Gemma 4-style chat templates."""

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from deepspec.data.chat import tokenize_conversation
from deepspec.data.conversations import DataError
from deepspec.tiny_target import _trained_tokenizer_json, build_tokenizer, stdlib_root

# Our own renderings of the two families' formats (Qwen3: ChatML with an empty
# think block before the final answer when thinking is off; Gemma 4: <|turn> ... <turn|>,
# assistant named "model", content trimmed).
QWEN3_STYLE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\n' }}{%- if loop.last -%}{{ '<think>\n\n</think>\n\n' }}{%- endif -%}"
    "{{ m.content }}{{ '<|im_end|>\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
GEMMA4_STYLE = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{{ '<|turn>' + ('model' if m.role == 'assistant' else m.role) + '\n' + (m.content | trim) + '<turn|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|turn>model\n' }}{%- endif -%}"
)


def make_tokenizer(template, extra_specials=(), **special):
    raw = Tokenizer.from_str(_trained_tokenizer_json(str(stdlib_root()), 4096))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, chat_template=template, **special)
    tok.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    return tok


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "def add(a, b):"},
    {"role": "assistant", "content": "return a + b"},
    {"role": "user", "content": "and sub?"},
    {"role": "assistant", "content": "def sub(a, b):\n    return a - b\n"},
]


def expected(tok, pieces):
    """Reference mask from hand-marked pieces: decode token by token, mark tokens that overlap
    a supervised piece (no offset mapping involved)."""
    full = "".join(text for text, _ in pieces)
    ranges, pos = [], 0
    for text, supervised in pieces:
        if supervised:
            ranges.append((pos, pos + len(text)))
        pos += len(text)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    mask, pos = [], 0
    for token_id in ids:
        piece = tok.decode([token_id])
        mask.append(int(any(pos < end and pos + len(piece) > start for start, end in ranges)))
        pos += len(piece)
    assert pos == len(full)
    return ids, mask


def test_qwen3_style_mask_token_by_token():
    tok = make_tokenizer(QWEN3_STYLE, eos_token="<|im_end|>", extra_specials=["<think>", "</think>"])
    out = tokenize_conversation(tok, CONVERSATION, chat_template="qwen3", max_length=4096)
    ids, mask = expected(
        tok,
        [
            (
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\ndef add(a, b):<|im_end|>\n"
                "<|im_start|>assistant\n",
                0,
            ),
            ("return a + b<|im_end|>", 1),
            ("\n<|im_start|>user\nand sub?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", 0),
            ("def sub(a, b):\n    return a - b\n<|im_end|>", 1),
            ("\n", 0),
        ],
    )
    assert out.input_ids == ids
    assert out.loss_mask == mask
    assert tok.convert_ids_to_tokens([i for i, m in zip(out.input_ids, out.loss_mask) if m])[-1] == "<|im_end|>"
    assert not out.truncated


def test_gemma4_style_mask_token_by_token():
    tok = make_tokenizer(GEMMA4_STYLE, bos_token="<bos>", eos_token="<eos>", extra_specials=["<|turn>", "<turn|>"])
    out = tokenize_conversation(tok, CONVERSATION[1:], chat_template="gemma4", max_length=4096)
    ids, mask = expected(
        tok,
        [
            ("<bos><|turn>user\ndef add(a, b):<turn|>\n<|turn>model\n", 0),
            ("return a + b<turn|>", 1),
            ("\n<|turn>user\nand sub?<turn|>\n<|turn>model\n", 0),
            ("def sub(a, b):\n    return a - b<turn|>", 1),
            ("\n", 0),
        ],
    )
    assert out.input_ids == ids
    assert out.loss_mask == mask


def test_tiny_tokenizer_truncation_and_counts():
    tok = build_tokenizer()
    full = tokenize_conversation(tok, CONVERSATION[1:3], chat_template="qwen3", max_length=4096)
    assert full.num_loss_tokens == len(tok("return a + b", add_special_tokens=False)["input_ids"]) + 1
    cut = tokenize_conversation(tok, CONVERSATION[1:3], chat_template="qwen3", max_length=5)
    assert cut.truncated and len(cut.input_ids) == 5 and cut.input_ids == full.input_ids[:5]


def test_template_that_rewrites_content_is_an_error():
    tok = make_tokenizer("{% for m in messages %}{{ m.content | upper }}<|im_end|>{% endfor %}", eos_token="<|im_end|>")
    with pytest.raises(DataError, match="did not render its content verbatim"):
        tokenize_conversation(tok, CONVERSATION[1:3], chat_template="qwen3", max_length=100)


class _ChunkTokenizer:
    """A stand-in tokenizer with hand-made token boundaries, one of which straddles the content start
    (as Qwen's byte-level BPE merges "\n" with an answer's leading spaces)."""

    eos_token = "<|im_end|>"

    def apply_chat_template(self, messages, **_):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)

    def __call__(self, text, **_):
        chunks = [
            "<|im_start|>",
            "user",
            "\n",
            "x",
            "<|im_end|>",
            "\n",
            "<|im_start|>",
            "assistant",
            "\n   ",
            " return",
            " 1",
            "<|im_end|>",
            "\n",
        ]
        assert "".join(chunks) == text
        offsets, pos = [], 0
        for c in chunks:
            offsets.append((pos, pos + len(c)))
            pos += len(c)
        return {"input_ids": list(range(len(chunks))), "offset_mapping": offsets}


def test_token_straddling_the_content_start_is_supervised():
    conv = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "    return 1"}]
    out = tokenize_conversation(_ChunkTokenizer(), conv, chat_template="qwen3", max_length=100)
    #                        <s> user \n  x  </s> \n  <s> asst "\n   " return 1  </s> \n
    assert out.loss_mask == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
