"""Chat conversation -> (input_ids, loss_mask) with the target's own chat template.

The loss mask covers exactly the assistant content tokens plus the end-of-turn
token that closes each assistant turn: the draft must learn what the target
writes and when it stops, never the prompt or the template's scaffolding.

We render the whole conversation once with the tokenizer's template, locate
each assistant message's content in the rendered text (in order, so repeated
strings cannot be confused), extend the span to the family's end-of-turn
marker, and map character spans to tokens through the fast tokenizer's offset
mapping. This works for any template that renders content verbatim, which is
checked: a template that rewrites content is an error, not a silent bad mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from deepspec.data.conversations import DataError


@dataclass
class TokenizedConversation:
    input_ids: list[int]
    loss_mask: list[int]
    truncated: bool

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)


def end_of_turn_marker(tokenizer, chat_template: str) -> str:
    """The string that closes an assistant turn: the family's marker (``TargetFamily.end_of_turn``, the
    one difference between families here) when the tokenizer has it, else the tokenizer's eos_token."""
    from deepspec.targets import FAMILIES, family_by_chat_template

    family = family_by_chat_template(chat_template)
    marker = family.end_of_turn_marker(tokenizer) if family else getattr(tokenizer, "eos_token", None)
    if not marker:
        raise DataError(
            f"no end-of-turn marker known for chat template {chat_template!r}; "
            f"use one of {sorted({f.chat_template for f in FAMILIES})} or give the tokenizer an eos_token",
            reason="template_mismatch",
        )
    return marker


def assistant_char_spans(text: str, messages: Sequence[dict], *, end_of_turn: str) -> list[tuple[int, int]]:
    """[start, end) character spans of each assistant content + its end-of-turn marker."""
    spans, cursor = [], 0
    for turn, message in enumerate(messages):
        # Templates may trim content (Gemma does); prefer the verbatim text, else the trimmed one.
        content = message["content"]
        start = text.find(content, cursor)
        if start < 0:
            content = content.strip()
            start = text.find(content, cursor)
        if start < 0:
            raise DataError(
                f"turn {turn} ({message['role']}): the chat template did not render its content verbatim, "
                "so the loss mask cannot be located; check data.chat_template and the tokenizer's template",
                reason="template_mismatch",
            )
        end = start + len(content)
        if message["role"] == "assistant":
            eot = text.find(end_of_turn, end)
            if eot < 0 or text[end:eot].strip():
                raise DataError(
                    f"turn {turn}: assistant content is not followed by the end-of-turn marker {end_of_turn!r}",
                    reason="template_mismatch",
                )
            end = eot + len(end_of_turn)
            spans.append((start, end))
        cursor = end
    return spans


def tokenize_conversation(
    tokenizer,
    messages: Sequence[dict],
    *,
    chat_template: str,
    max_length: int,
    enable_thinking: bool = False,
) -> TokenizedConversation:
    """Render with the chat template, tokenize, and mark supervised tokens; truncate to ``max_length``."""
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=False, enable_thinking=enable_thinking
    )
    spans = assistant_char_spans(text, messages, end_of_turn=end_of_turn_marker(tokenizer, chat_template))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    # A token is supervised if it overlaps a span: byte-level BPE may merge the
    # template's "\n" with the content's leading spaces, and that token carries content.
    loss_mask, span_index = [], 0
    for token_start, token_end in offsets:
        while span_index < len(spans) and token_start >= spans[span_index][1]:
            span_index += 1
        overlaps = span_index < len(spans) and token_end > spans[span_index][0] and token_end > token_start
        loss_mask.append(int(overlaps))
    truncated = len(input_ids) > max_length
    return TokenizedConversation(
        input_ids=list(input_ids[:max_length]), loss_mask=loss_mask[:max_length], truncated=truncated
    )
