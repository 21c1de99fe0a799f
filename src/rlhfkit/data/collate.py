"""Tokenization and batching of prompts, demonstrations and preference pairs.

One tokenization everywhere (SFT, reward model, PPO): the prompt and the response are
encoded *separately* and concatenated, exactly as a response is generated after a prompt.

    prompt ids    [BOS] + encode(prompt)         BOS only if the tokenizer has one and the
                                                 text (e.g. a chat template) lacks it
    response ids  encode(response) + [EOS]       EOS so the model learns to stop (not added
                                                 twice when the text already ends with it)

Nothing is added by the tokenizer itself (`add_special_tokens=False`), so a tokenizer that
adds BOS and one that does not give the same ids.

Too-long rows lose the *start* of the prompt (the end is what the response continues),
keeping a leading BOS; only if the response alone is too long is it cut on the right.

    collate_prompts       LEFT-padded: generation appends on the right, and position ids
                          from the mask make padding invisible (N implementation detail)
    collate_sft / _preferences / _unique_responses
                          RIGHT-padded: plain default positions are right, and the
                          last real token (where a reward model reads its score) is at
                          attention_mask.sum(-1) - 1
    collate_packed_sft    several examples per row, kept apart by position ids that
                          restart with each one (no attention mask): less padding
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import torch

from rlhfkit.core import position_ids_from_mask
from rlhfkit.data.formats import PreferencePair, SFTExample
from rlhfkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ON_LONG = ("truncate", "error")


# ---------------------------------------------------------------------------- encoding

def encode_texts(texts: list[str], tokenizer) -> list[list[int]]:
    """ids of each text, nothing added; each distinct text is encoded once, all of them in
    one batched call (a fast tokenizer encodes a batch in Rust; the K responses of a ranked
    prompt share one prompt, and a response sits in K-1 pairs)."""
    unique = list(dict.fromkeys(texts))
    ids = (tokenizer(unique, add_special_tokens=False, return_attention_mask=False)["input_ids"]
           if unique else [])
    lookup = dict(zip(unique, ids))
    return [list(lookup[text]) for text in texts]


def encode_prompts(texts: list[str], tokenizer) -> list[list[int]]:
    """[BOS] + ids of each text (BOS only when the tokenizer has one and the text lacks it)."""
    bos = tokenizer.bos_token_id
    return [ids if bos is None or ids[:1] == [bos] else [bos] + ids
            for ids in encode_texts(texts, tokenizer)]


def encode_responses(texts: list[str], tokenizer) -> list[list[int]]:
    """ids of each text + [EOS] (not doubled when the text already ends with the EOS token)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("tokenizer: it has no eos_token; rlhfkit needs one to end a response")
    return [ids if ids[-1:] == [eos] else ids + [eos] for ids in encode_texts(texts, tokenizer)]


def encode_prompt(text: str, tokenizer) -> list[int]:
    """`encode_prompts` of one text."""
    return encode_prompts([text], tokenizer)[0]


def encode_response(text: str, tokenizer) -> list[int]:
    """`encode_responses` of one text."""
    return encode_responses([text], tokenizer)[0]


def truncate_left(ids: list[int], max_len: int, bos_token_id: int | None) -> list[int]:
    """The last `max_len` tokens of `ids`; a leading BOS stays first (it counts in max_len)."""
    if len(ids) <= max_len:
        return ids
    if max_len <= 0:
        return []
    if bos_token_id is not None and ids[0] == bos_token_id:
        return [bos_token_id] + ids[len(ids) - (max_len - 1):]
    return ids[len(ids) - max_len:]


def _check_length(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: got {value!r}, expected a positive integer")


def _fit(prompt: list[int], responses: list[list[int]], max_length: int,
         bos: int | None) -> tuple[list[int], list[list[int]], bool]:
    """Cut `prompt` from the left so prompt + the longest response fits `max_length`;
    then cut any response still too long on the right. Returns (prompt, responses, cut?)."""
    budget = max_length - max(len(r) for r in responses)
    cut = len(prompt) > budget
    if cut:
        keep_bos = int(bos is not None and prompt[:1] == [bos])  # even if the response is long
        prompt = truncate_left(prompt, max(budget, keep_bos), bos)
    room = max_length - len(prompt)
    return prompt, [r[:room] for r in responses], cut


def _warn_truncated(count: int, total: int, what: str, limit: str) -> None:
    if count:
        log.warning("truncated %d of %d %s to %s (the start of the prompt was dropped)",
                    count, total, what, limit)


# ---------------------------------------------------------------------------- prompts

def tokenize_prompts(prompts: list[str], tokenizer, max_prompt_length: int,
                     on_long: str = "truncate") -> tuple[list[list[int]], int]:
    """Encode prompts (see `encode_prompt`); those over `max_prompt_length` tokens keep
    their last tokens ("truncate") or raise `DataError` ("error").

    Returns (token id lists, number truncated).
    """
    if on_long not in ON_LONG:
        raise ConfigError(f"on_long: got {on_long!r}, expected one of {', '.join(ON_LONG)}")
    _check_length("max_prompt_length", max_prompt_length)
    token_lists, num_truncated = [], 0
    for i, ids in enumerate(encode_prompts(prompts, tokenizer)):
        if not ids:
            raise DataError("prompts", None, None, f"prompt {i} encodes to no tokens")
        if len(ids) > max_prompt_length:
            if on_long == "error":
                raise DataError("prompts", None, None,
                                f"prompt {i} has {len(ids)} tokens, more than "
                                f"max_prompt_length={max_prompt_length} (on_long='error')")
            ids = truncate_left(ids, max_prompt_length, tokenizer.bos_token_id)
            num_truncated += 1
        token_lists.append(ids)
    _warn_truncated(num_truncated, len(prompts), "prompts",
                    f"max_prompt_length={max_prompt_length}")
    return token_lists, num_truncated


def _pad(rows: list[list[int]], value: int, length: int, left: bool) -> torch.Tensor:
    """(B, length) long tensor of `rows`, each padded with `value` on one side."""
    padded = [[value] * (length - len(r)) + r if left else r + [value] * (length - len(r))
              for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def collate_prompts(token_lists: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """LEFT-pad prompts to the longest one of the batch.

    Returns input_ids (B, P), attention_mask (B, P) with 1 on real tokens, and
    position_ids (B, P) counting from 0 at each row's first real token.

        [[5, 6, 7], [8]]  ->  input_ids [[5, 6, 7], [pad, pad, 8]]
                              attention_mask [[1, 1, 1], [0, 0, 1]]
                              position_ids [[0, 1, 2], [0, 0, 0]]
    """
    if not token_lists:
        raise ValueError("collate_prompts: empty batch")
    length = max(len(ids) for ids in token_lists)
    input_ids = _pad(token_lists, pad_token_id, length, left=True)
    attention_mask = _pad([[1] * len(ids) for ids in token_lists], 0, length, left=True)
    return dict(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask))


# ---------------------------------------------------------------------------- SFT

@dataclass
class TokenizedSFT:
    """One demonstration as ids. loss_mask[t] = 1 where input_ids[t] is a completion token
    or the final EOS (a target of the loss; the loss shifts by one itself)."""
    input_ids: list[int]
    loss_mask: list[int]


def tokenize_sft(examples: list[SFTExample], tokenizer,
                 max_length: int) -> tuple[list[TokenizedSFT], int]:
    """[BOS] prompt | completion EOS, at most `max_length` tokens; (items, number truncated)."""
    _check_length("max_length", max_length)
    items, num_truncated = [], 0
    prompts = encode_prompts([example.prompt for example in examples], tokenizer)
    completions = encode_responses([example.completion for example in examples], tokenizer)
    bos = tokenizer.bos_token_id
    for prompt, completion in zip(prompts, completions):
        prompt, (completion,), cut = _fit(prompt, [completion], max_length, bos)
        num_truncated += cut
        items.append(TokenizedSFT(prompt + completion, [0] * len(prompt) + [1] * len(completion)))
    _warn_truncated(num_truncated, len(examples), "SFT examples", f"max_length={max_length}")
    return items, num_truncated


def collate_sft(items: list[TokenizedSFT], pad_token_id: int) -> dict[str, torch.Tensor]:
    """RIGHT-pad to the longest row: input_ids, attention_mask, position_ids, loss_mask,
    all (B, L); loss_mask is 0 on prompt and padding."""
    if not items:
        raise ValueError("collate_sft: empty batch")
    length = max(len(item.input_ids) for item in items)
    input_ids = _pad([item.input_ids for item in items], pad_token_id, length, left=False)
    attention_mask = _pad([[1] * len(item.input_ids) for item in items], 0, length, left=False)
    loss_mask = _pad([item.loss_mask for item in items], 0, length, left=False)
    return dict(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), loss_mask=loss_mask)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of items grouped into rows of at most `capacity` tokens: best-fit decreasing
    (longest item first, each into the fullest row it still fits, by bisection over the
    rows' free room, O(n log n); an item longer than `capacity` gets a row of its own).
    Rows come out in the order they were opened.

        pack_rows([3, 5, 2, 4], 7)  ->  [[1, 2], [3, 0]]
    """
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []        # (free tokens, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        at = bisect.bisect_left(room, (lengths[i], -1))
        if at < len(room):
            free, r = room.pop(at)
            rows[r].append(i)
            bisect.insort(room, (free - lengths[i], r))
        else:
            rows.append([i])
            bisect.insort(room, (capacity - lengths[i], len(rows) - 1))
    return rows


def pack_sequences(rows: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                 list[tuple[int, int]]]:
    """`rows` packed several to a row of `length` tokens (`pack_rows`): input_ids and
    position_ids (R, length), R <= len(rows), and where each row went, (packed row, start).

    position_ids restart at 0 with each row; from them transformers' attention masks
    (`masking_utils.find_packed_sequence_indices`, used when no attention_mask is given)
    keep each row to its own tokens, as if it were alone. The tail after a packed row's
    last sequence repeats that row's first token, with positions from 0: a segment of its
    own that no real token attends to (not the pad id, which makes transformers warn that
    a mask may be missing).
    """
    ids, positions, places = [], [], [None] * len(rows)
    for r, members in enumerate(pack_rows([len(row) for row in rows], length)):
        row_ids, row_pos = [], []
        for i in members:
            places[i] = (r, len(row_ids))
            row_ids += rows[i]
            row_pos += range(len(rows[i]))
        tail = length - len(row_ids)
        ids.append(row_ids + [row_ids[0]] * tail)
        positions.append(row_pos + list(range(tail)))
    return torch.tensor(ids), torch.tensor(positions), places


def collate_packed_sft(items: list[TokenizedSFT], length: int | None = None) -> dict:
    """Several examples per row (`pack_sequences`) in rows of `length` tokens (default: the
    longest example's, so no row is longer, and no attention wider, than when padded):
    input_ids, position_ids, loss_mask (R, length), R <= B, and attention_mask None.

    An example's first token is no target: in a packed row the token before it belongs to
    another example (alone, nothing predicts it either). Tails are no targets.
    """
    if not items:
        raise ValueError("collate_packed_sft: empty batch")
    length = length or max(len(item.input_ids) for item in items)
    input_ids, position_ids, places = pack_sequences([item.input_ids for item in items], length)
    loss_mask = [[0] * length for _ in range(len(input_ids))]
    for item, (r, start) in zip(items, places):
        loss_mask[r][start + 1:start + len(item.loss_mask)] = item.loss_mask[1:]
    return dict(input_ids=input_ids, attention_mask=None, position_ids=position_ids,
                loss_mask=torch.tensor(loss_mask))


# ---------------------------------------------------------------------------- preferences

@dataclass
class TokenizedPair:
    """A preference pair as ids: the same prompt ids, then each response and EOS."""
    chosen_input_ids: list[int]
    rejected_input_ids: list[int]
    margin: float | None = None


def tokenize_preferences(pairs: list[PreferencePair], tokenizer,
                         max_length: int) -> tuple[list[TokenizedPair], int]:
    """[BOS] prompt | response EOS for both responses, at most `max_length` tokens each.

    The prompt is cut once, for the longer response, so both rows of a pair see the very
    same prompt (the comparison must differ only in the response). (items, number truncated).
    """
    _check_length("max_length", max_length)
    items, num_truncated = [], 0
    prompts = encode_prompts([pair.prompt for pair in pairs], tokenizer)
    responses = encode_responses([r for pair in pairs for r in (pair.chosen, pair.rejected)],
                                 tokenizer)
    bos = tokenizer.bos_token_id
    for pair, prompt, chosen, rejected in zip(pairs, prompts, responses[::2], responses[1::2]):
        prompt, (chosen, rejected), cut = _fit(prompt, [chosen, rejected], max_length, bos)
        num_truncated += cut
        items.append(TokenizedPair(prompt + chosen, prompt + rejected, pair.margin))
    _warn_truncated(num_truncated, len(pairs), "preference pairs", f"max_length={max_length}")
    return items, num_truncated


def collate_preferences(items: list[TokenizedPair],
                        pad_token_id: int) -> dict[str, torch.Tensor | None]:
    """RIGHT-pad chosen and rejected rows to one length L, the longest row of the batch
    (so a model may score torch.cat([chosen, rejected]) in one forward pass).

    Returns chosen_input_ids, chosen_attention_mask, rejected_input_ids,
    rejected_attention_mask, all (B, L), and margin (B,) float, or None when no pair has
    one (a pair without margin gets 0.0, the plain Bradley-Terry loss).
    """
    if not items:
        raise ValueError("collate_preferences: empty batch")
    chosen = [item.chosen_input_ids for item in items]
    rejected = [item.rejected_input_ids for item in items]
    length = max(len(ids) for ids in chosen + rejected)
    batch = {}
    for name, rows in (("chosen", chosen), ("rejected", rejected)):
        batch[f"{name}_input_ids"] = _pad(rows, pad_token_id, length, left=False)
        batch[f"{name}_attention_mask"] = _pad([[1] * len(r) for r in rows], 0, length,
                                               left=False)
    margins = [item.margin for item in items]
    batch["margin"] = (None if all(m is None for m in margins) else
                       torch.tensor([0.0 if m is None else m for m in margins]))
    return batch


def response_groups(items: list[TokenizedPair]) -> tuple[tuple[int, ...], ...]:
    """The pairs joined by shared rows: i and j are in one group when they share a
    prompt + response row, directly or through other pairs (connected components, by
    union-find). The K(K-1)/2 pairs of K responses a labeler ranked for one prompt form
    one group; a pair that shares nothing is a group of its own. Groups are listed in
    order of their first pair, each in index order:

        pairs (a>b) (d>e) (a>c) (c>f)  ->  ((0, 2, 3), (1,))
    """
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]   # path halving
            i = parent[i]
        return i
    first_pair_of_row: dict[tuple[int, ...], int] = {}
    for i, item in enumerate(items):
        for ids in (item.chosen_input_ids, item.rejected_input_ids):
            a, b = root(i), root(first_pair_of_row.setdefault(tuple(ids), i))
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(root(i), []).append(i)
    return tuple(tuple(members) for members in groups.values())


def collate_unique_responses(items: list[TokenizedPair], pad_token_id: int,
                             pack: bool = False,
                             length: int | None = None) -> dict[str, torch.Tensor | None]:
    """The DISTINCT rows of a batch of pairs, RIGHT-padded to one length L, and which of
    them each pair's chosen and rejected rows are.

    K responses to one prompt make K(K-1)/2 pairs, yet only K rows to score: InstructGPT
    (Ouyang et al. 2022, §3.5) scores each response once and takes the loss over every
    pair of them, K forward passes instead of K(K-1). A row's score does not depend on the
    batch it is in, so scoring it once and reading it twice changes no result.

        pairs (a>b) (a>c) (c>b)  ->  input_ids [a, b, c]   chosen_index  [0, 0, 2]
                                                           rejected_index [1, 2, 1]

    Returns input_ids (U, L), attention_mask (U, L), chosen_index (B,), rejected_index (B,)
    (long, into the U <= 2B rows), and margin (B,) as in `collate_preferences`.

    `pack`: the U rows packed several to a row of `length` tokens instead (default: the
    longest row's; `pack_sequences`): input_ids and position_ids (R, L), attention_mask
    None, and last_token (U, 2), the (packed row, column) of each distinct row's last token.
    """
    if not items:
        raise ValueError("collate_unique_responses: empty batch")
    index: dict[tuple[int, ...], int] = {}
    for item in items:
        for ids in (item.chosen_input_ids, item.rejected_input_ids):
            index.setdefault(tuple(ids), len(index))
    rows = [list(ids) for ids in index]
    margins = [item.margin for item in items]
    longest = max(map(len, rows))
    if pack:
        input_ids, position_ids, places = pack_sequences(rows, length or longest)
        rows_of = {"input_ids": input_ids, "attention_mask": None, "position_ids": position_ids,
                   "last_token": torch.tensor([(r, start + len(row) - 1)
                                               for row, (r, start) in zip(rows, places)])}
    else:
        rows_of = {"input_ids": _pad(rows, pad_token_id, longest, left=False),
                   "attention_mask": _pad([[1] * len(r) for r in rows], 0, longest, left=False)}
    return {
        **rows_of,
        "chosen_index": torch.tensor([index[tuple(i.chosen_input_ids)] for i in items]),
        "rejected_index": torch.tensor([index[tuple(i.rejected_input_ids)] for i in items]),
        "margin": (None if all(m is None for m in margins) else
                   torch.tensor([0.0 if m is None else m for m in margins])),
    }
