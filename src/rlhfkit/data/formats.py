"""Typed records for the three kinds of data, and loaders that detect the layout of a file.

The layout is read from the columns (the union of keys over all rows), never configured:

    prompts      prompt                        text, or a list of chat messages
                 messages                      chat messages; a final assistant turn is
                                               dropped, so an SFT chat file doubles as prompts
    SFT          messages                      prompt = every turn but the last (assistant)
                                               one, rendered with the generation prompt
                 prompt + completion
                 text                          empty prompt, loss on the whole text
    preferences  prompt + chosen + rejected    (+ optional margin)
                 chosen + rejected             full texts sharing an implicit prompt
                                               (Anthropic HH): see `split_shared_prompt`
                 chosen + rejected as chats    message lists sharing all but the last turn

Chat messages are `[{"role": ..., "content": ...}, ...]`, rendered with the tokenizer's
chat template. A response cut from a chat is the template's own text after the generation
prompt (with the tiny test template, "assistant: hello<|eos|>" gives " hello<|eos|>"), so SFT,
reward-model and PPO data tokenize a turn exactly as the model sees it when it generates.
Extra columns are ignored. A bad row raises `DataError` naming file, line and field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from rlhfkit.data.readers import read_rows
from rlhfkit.errors import DataError

HH_ASSISTANT_MARKER = "\n\nAssistant:"


@dataclass(frozen=True)
class SFTExample:
    """One demonstration: the loss is taken on `completion` (plus EOS) only."""
    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferencePair:
    """One human comparison: `chosen` was preferred to `rejected` as a reply to `prompt`.

    `margin` (optional) is how strongly, used as r_c - r_r - margin in the loss
    (Llama 2, Touvron et al. 2023); None when the data has none.
    """
    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None


# ---------------------------------------------------------------------------- loaders

def load_prompts(source: str | os.PathLike, tokenizer=None, split: str = "train") -> list[str]:
    """Prompt texts from a `prompt` column (text or chat) or a `messages` column (chat)."""
    rows = _rows(source, split, tokenizer)
    columns = _columns(rows)
    if "prompt" in columns:
        return [row.prompt("prompt", allow_empty=False) for row in rows]
    if "messages" in columns:
        return [row.chat_prompt("messages") for row in rows]
    raise _no_layout(source, columns, "'prompt' (text or chat messages) or 'messages'")


def load_sft(source: str | os.PathLike, tokenizer=None, split: str = "train") -> list[SFTExample]:
    """Demonstrations from `messages`, `prompt` + `completion`, or plain `text` columns."""
    rows = _rows(source, split, tokenizer)
    columns = _columns(rows)
    if "messages" in columns:
        return [SFTExample(*row.chat_turns("messages")) for row in rows]
    if "completion" in columns or ("prompt" in columns and "text" not in columns):
        return [SFTExample(*row.prompt_and_response("prompt", "completion")) for row in rows]
    if "text" in columns:
        return [SFTExample("", row.text("text", allow_empty=False)) for row in rows]
    raise _no_layout(source, columns, "'messages', 'prompt' + 'completion', or 'text'")


def load_preferences(source: str | os.PathLike, tokenizer=None,
                     split: str = "train") -> list[PreferencePair]:
    """Preference pairs in any of the three layouts of the module docstring.

    Per row: both responses non-empty and different, `margin` a number when present.
    """
    rows = _rows(source, split, tokenizer)
    explicit_prompt = "prompt" in _columns(rows)
    pairs = []
    for row in rows:
        if explicit_prompt:
            prompt, chosen = row.prompt_and_response("prompt", "chosen")
            _, rejected = row.prompt_and_response("prompt", "rejected")
        elif isinstance(row.values.get("chosen"), list):
            prompt, chosen, rejected = row.shared_chat("chosen", "rejected")
        else:
            full_chosen = row.text("chosen", allow_empty=False)
            full_rejected = row.text("rejected", allow_empty=False)
            prompt, chosen, rejected = split_shared_prompt(full_chosen, full_rejected)
            row.check_response("chosen", chosen, "after removing the shared prompt")
            row.check_response("rejected", rejected, "after removing the shared prompt")
        if chosen == rejected:
            raise row.error("rejected", "identical to 'chosen'; a pair needs two "
                            "different responses")
        pairs.append(PreferencePair(prompt, chosen, rejected, row.margin("margin")))
    return pairs


def split_shared_prompt(chosen: str, rejected: str,
                        marker: str = HH_ASSISTANT_MARKER) -> tuple[str, str, str]:
    """Split two full texts into (prompt, chosen_response, rejected_response).

    The prompt is the longest common prefix of the two texts, cut back
    1. to just after the last `marker` ("\\n\\nAssistant:") in it, when there is one
       (Anthropic HH: the responses are whole final assistant turns, even when they
       begin with the same words), else
    2. to just before the last whitespace character in it, so no word is split and each
       response starts with its leading space, as BPE tokenizers expect.
    With neither, the prompt is "" and the responses are the full texts.

        "\\n\\nHuman: Hi\\n\\nAssistant: Hello!" vs "...Assistant: Go away."
        -> ("\\n\\nHuman: Hi\\n\\nAssistant:", " Hello!", " Go away.")
    """
    common = os.path.commonprefix([chosen, rejected])
    at = common.rfind(marker)
    if at >= 0:
        cut = at + len(marker)
    else:
        cut = max((i for i, ch in enumerate(common) if ch.isspace()), default=0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


# ---------------------------------------------------------------------------- rows

def _rows(source, split, tokenizer) -> list[_Row]:
    return [_Row(str(source), where, values, tokenizer)
            for where, values in read_rows(source, split)]


def _columns(rows: list[_Row]) -> set[str]:
    """Union of the keys: JSON Lines rows may differ; a missing value is caught per row."""
    return set().union(*(row.values.keys() for row in rows))


def _no_layout(source, columns: set[str], expected: str) -> DataError:
    found = ", ".join(sorted(columns)) or "none"
    return DataError(source, None, None, f"cannot tell the layout from the columns "
                     f"({found}); expected {expected}")


@dataclass
class _Row:
    """One raw row and where it came from, with the field checks that name both."""
    source: str
    where: int
    values: dict
    tokenizer: object

    def error(self, field: str | None, problem: str) -> DataError:
        return DataError(self.source, self.where, field, problem)

    def missing(self, field: str) -> DataError:
        present = ", ".join(sorted(k for k, v in self.values.items() if v is not None))
        return self.error(field, f"missing (the row has: {present or 'nothing'})")

    def text(self, field: str, allow_empty: bool = True) -> str:
        """The string in `field`; missing (or null), non-string or blank -> DataError."""
        value = self.values.get(field)
        if value is None:
            raise self.missing(field)
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__}")
        if not allow_empty:
            self.check_response(field, value)
        return value

    def check_response(self, field: str, value: str, context: str = "") -> None:
        if not value.strip():
            raise self.error(field, f"empty text {context}".strip())

    def margin(self, field: str) -> float | None:
        """A finite number, a string holding one (CSV), or None when absent or ""."""
        value = self.values.get(field)
        if value is None or value == "":
            return None
        if not isinstance(value, bool):  # True is an int in Python, but no margin
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):  # 10**400 is an int, not a float
                number = math.nan
            if math.isfinite(number):
                return number
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise self.error(field, f"expected a finite number, got {shown}")

    # -- chat messages

    def messages(self, field: str) -> list[dict]:
        """A non-empty list of {"role": str, "content": str} (other keys are kept)."""
        value = self.values.get(field)
        if value is None:
            raise self.missing(field)
        if not isinstance(value, list) or not value:
            raise self.error(field, "expected a non-empty list of chat messages")
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                raise self.error(field, f"message {i} is not an object")
            for key in ("role", "content"):
                if not isinstance(message.get(key), str):
                    raise self.error(field, f"message {i}: '{key}' must be a string")
        return value

    def render(self, field: str, messages: list[dict], add_generation_prompt: bool) -> str:
        """The chat template applied to `messages`, as text."""
        template = getattr(self.tokenizer, "chat_template", None)
        if self.tokenizer is None or not template:
            raise self.error(field, "chat messages need a tokenizer with a chat template "
                             "(pass tokenizer=...)")
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False)
        except Exception as e:  # a Jinja error from the template: one line for the user
            raise self.error(field, f"the chat template failed: {type(e).__name__}: {e}") \
                from None
        return text

    def chat_prompt(self, field: str) -> str:
        """Rendered prompt of a chat; a final assistant turn (SFT data) is left out."""
        messages = self.messages(field)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return self.render(field, messages, add_generation_prompt=True)

    def split_turns(self, field: str, context: list[dict], reply: dict) -> tuple[str, str]:
        """(prompt, response) texts of `context` followed by the assistant `reply`.

        The response is what the template writes after the generation prompt, up to and
        including the last EOS (trailing whitespace after it dropped, so one EOS ends
        the response). If the template does not extend its own prompt, the raw content.
        """
        if reply["role"] != "assistant":
            raise self.error(field, f"the last message must be from the assistant, "
                             f"not '{reply['role']}'")
        self.check_response(field, reply["content"], "in the last message")
        prompt = self.render(field, context, add_generation_prompt=True)
        full = self.render(field, context + [reply], add_generation_prompt=False)
        if not full.startswith(prompt):
            return prompt, reply["content"]
        response = full[len(prompt):]
        eos = getattr(self.tokenizer, "eos_token", None)
        end = response.rfind(eos) if eos else -1
        if end >= 0 and not response[end + len(eos):].strip():
            response = response[:end + len(eos)]
        return prompt, response

    def chat_turns(self, field: str) -> tuple[str, str]:
        messages = self.messages(field)
        return self.split_turns(field, messages[:-1], messages[-1])

    def shared_chat(self, chosen_field: str, rejected_field: str) -> tuple[str, str, str]:
        """Two chats equal up to their last (assistant) turn -> (prompt, chosen, rejected)."""
        chosen, rejected = self.messages(chosen_field), self.messages(rejected_field)
        if chosen[:-1] != rejected[:-1]:
            raise self.error(rejected_field, "the two conversations must share every turn "
                             "but the last one")
        prompt, chosen_text = self.split_turns(chosen_field, chosen[:-1], chosen[-1])
        _, rejected_text = self.split_turns(rejected_field, rejected[:-1], rejected[-1])
        return prompt, chosen_text, rejected_text

    # -- prompt with response, as text or as chat

    def prompt(self, field: str, allow_empty: bool = True) -> str:
        """A prompt given as text, or as chat messages rendered with the generation prompt."""
        if isinstance(self.values.get(field), list):
            return self.chat_prompt(field)
        return self.text(field, allow_empty=allow_empty)

    def prompt_and_response(self, prompt_field: str, response_field: str) -> tuple[str, str]:
        """Text prompt + text response, or (TRL conversational) chat prompt + one-message
        assistant reply list; a chat prompt with a text response keeps the text as is."""
        value = self.values.get(response_field)
        if not isinstance(value, list):
            return self.prompt(prompt_field), self.text(response_field, allow_empty=False)
        if not isinstance(self.values.get(prompt_field), list):
            raise self.error(response_field, "chat messages need a prompt that is chat "
                             "messages too")
        reply = self.messages(response_field)
        if len(reply) != 1:
            raise self.error(response_field, f"expected one assistant message after the "
                             f"prompt, got {len(reply)}")
        return self.split_turns(response_field, self.messages(prompt_field), reply[0])
