"""rlhfkit.data: file readers, layout detection, field errors, tokenization and batching.

Every file is a real file written to tmp_path; the tokenizer is the offline tiny one from
conftest (pad 0, bos 1, eos 2; chat template "role: content<|eos|>", generation prompt
"assistant:").
"""

from __future__ import annotations

import csv
import json
import logging
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhfkit.data import (PreferencePair, SFTExample, TokenizedPair, TokenizedSFT,
                          collate_packed_sft, collate_preferences, pack_rows,
                          collate_unique_responses, response_groups,
                          collate_prompts, collate_sft, encode_prompt, encode_prompts,
                          encode_response, encode_responses, encode_texts,
                          load_preferences, load_prompts, load_sft, read_rows,
                          split_shared_prompt, tokenize_preferences, tokenize_prompts,
                          tokenize_sft)
from rlhfkit.errors import ConfigError, DataError

# ---------------------------------------------------------------------------- writers


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path, rows):
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        columns = list(dict.fromkeys(k for r in rows for k in r))  # union, in order
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    return path


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_saved_dataset(path, rows):
    import datasets
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def write_saved_dataset_dict(path, rows):
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(path))
    return path


def raises_data_error(fn, *args, **kwargs) -> str:
    """Run fn, expect a DataError, return its message (which must be one line)."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- file types

HH_PROMPT = "\n\nHuman: Is the sky blue?\n\nAssistant:"
EXPLICIT_ROWS = [
    {"prompt": HH_PROMPT, "chosen": " Yes, on a clear day.", "rejected": " No.", "margin": 2.0},
    {"prompt": "What is 2 + 2?", "chosen": " 4", "rejected": " 5", "margin": None,
     "source": "extra columns are ignored"},
]
EXPECTED_PAIRS = [PreferencePair(HH_PROMPT, " Yes, on a clear day.", " No.", 2.0),
                  PreferencePair("What is 2 + 2?", " 4", " 5", None)]


@pytest.mark.parametrize("name, writer", [
    ("p.jsonl", write_jsonl), ("p.json", write_json), ("p.csv", write_csv),
    ("p.parquet", write_parquet), ("saved", write_saved_dataset),
    ("saved_dict", write_saved_dataset_dict),
])
def test_every_file_type_loads_the_same_pairs(tmp_path, name, writer):
    path = writer(tmp_path / name, EXPLICIT_ROWS)
    assert load_preferences(path) == EXPECTED_PAIRS


def test_line_numbers_and_row_indices(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert read_rows(jsonl) == [(1, {"a": 1}), (3, {"a": 2})]  # blank lines still count
    table = tmp_path / "p.csv"
    table.write_text('a,b\n1,"two\nlines"\n3,4\n', encoding="utf-8")
    assert [where for where, _ in read_rows(table)] == [2, 4]  # header is line 1
    assert [where for where, _ in read_rows(write_json(tmp_path / "p.json", [{}, {}]))] == [0, 1]


def test_json_file_holding_json_lines_is_read_as_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", EXPLICIT_ROWS)
    assert load_preferences(path) == EXPECTED_PAIRS
    (tmp_path / "bad.json").write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    assert raises_data_error(read_rows, tmp_path / "bad.json").startswith(
        f"{tmp_path / 'bad.json'}:2: invalid JSON")


def test_jsonl_file_holding_a_json_array_is_read(tmp_path):
    path = write_json(tmp_path / "array.jsonl", EXPLICIT_ROWS)
    assert load_preferences(path) == EXPECTED_PAIRS


def test_dataset_dict_split_is_chosen_and_a_missing_split_is_named(tmp_path):
    path = write_saved_dataset_dict(tmp_path / "saved", EXPLICIT_ROWS)
    assert load_preferences(path, split="test") == EXPECTED_PAIRS[:1]
    message = raises_data_error(read_rows, path, split="validation")
    assert "no split 'validation'" in message and "test, train" in message


def test_missing_paths_and_unknown_types_are_data_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    assert raises_data_error(read_rows, missing) == f"{missing}: no such file or folder"
    assert "no such file" in raises_data_error(read_rows, "./data/prefs")
    (tmp_path / "notes.txt").write_text("hi", encoding="utf-8")
    assert "unsupported file type '.txt'" in raises_data_error(read_rows, tmp_path / "notes.txt")
    (tmp_path / "folder").mkdir()
    assert "save_to_disk" in raises_data_error(read_rows, tmp_path / "folder")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    assert "Parquet" in raises_data_error(read_rows, tmp_path / "junk.parquet")


# ---------------------------------------------------------------------------- preference layouts

def test_split_shared_prompt_rule():
    # 1. the HH marker wins, even when both responses start with the same words
    assert split_shared_prompt(HH_PROMPT + " I think so.", HH_PROMPT + " I think not.") == (
        HH_PROMPT, " I think so.", " I think not.")
    # 2. without it, cut before the last whitespace of the common prefix (no split words)
    assert split_shared_prompt("The answer is 4", "The answer isn't 5") == (
        "The answer", " is 4", " isn't 5")
    # neither: no prompt at all
    assert split_shared_prompt("Yes", "Yes indeed") == ("", "Yes", "Yes indeed")


def test_three_preference_layouts_load_the_same_pairs(tmp_path, tiny_tokenizer):
    user = {"role": "user", "content": "Is the sky blue?"}
    good = {"role": "assistant", "content": "Yes, on a clear day."}
    bad = {"role": "assistant", "content": "No."}
    prompt = "user: Is the sky blue?<|eos|>assistant:"  # the template's rendering
    expected = [PreferencePair(prompt, " Yes, on a clear day.<|eos|>", " No.<|eos|>", None)]
    layouts = {
        "explicit": {"prompt": prompt, "chosen": expected[0].chosen, "rejected": " No.<|eos|>"},
        "implicit": {"chosen": prompt + expected[0].chosen, "rejected": prompt + " No.<|eos|>"},
        "chat": {"chosen": [user, good], "rejected": [user, bad]},
        "chat_with_prompt": {"prompt": [user], "chosen": [good], "rejected": [bad]},  # TRL
    }
    for name, row in layouts.items():
        path = write_jsonl(tmp_path / f"{name}.jsonl", [row])
        assert load_preferences(path, tokenizer=tiny_tokenizer) == expected, name


def test_hh_style_implicit_prompt(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": HH_PROMPT + " Yes, on a clear day.", "rejected": HH_PROMPT + " No."}])
    assert load_preferences(path) == [PreferencePair(HH_PROMPT, " Yes, on a clear day.",
                                                     " No.", None)]


def test_chat_pairs_must_share_all_but_the_last_turn(tmp_path, tiny_tokenizer):
    chosen = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rejected = [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "Go"}]
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": chosen, "rejected": rejected}])
    message = raises_data_error(load_preferences, path, tokenizer=tiny_tokenizer)
    assert message.startswith(f"{path}:1: field 'rejected': the two conversations")


# ---------------------------------------------------------------------------- prompts and SFT

def test_prompts_from_text_and_from_messages(tmp_path, tiny_tokenizer):
    text = write_jsonl(tmp_path / "text.jsonl", [{"prompt": "Tell me a story."}])
    assert load_prompts(text) == ["Tell me a story."]
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": "Tell me a story."}]},
        # an SFT conversation used as a prompt: its final assistant turn is left out
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
    ])
    assert load_prompts(chat, tokenizer=tiny_tokenizer) == [
        "user: Tell me a story.<|eos|>assistant:", "user: Hi<|eos|>assistant:"]
    assert "field 'messages': chat messages need a tokenizer" in raises_data_error(
        load_prompts, chat)


def test_sft_from_three_layouts(tmp_path, tiny_tokenizer):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you."}]}])
    assert load_sft(chat, tokenizer=tiny_tokenizer) == [SFTExample(
        "user: Hi<|eos|>assistant: Hello!<|eos|>user: Bye<|eos|>assistant:", " See you.<|eos|>")]
    pc = write_csv(tmp_path / "pc.csv", [{"prompt": "Q: 2+2?", "completion": " A: 4"}])
    assert load_sft(pc) == [SFTExample("Q: 2+2?", " A: 4")]
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "The cat sees a dog."}])
    assert load_sft(text) == [SFTExample("", "The cat sees a dog.")]
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "?"}])
    assert "cannot tell the layout from the columns (question)" in raises_data_error(
        load_sft, other)


def test_sft_chat_must_end_with_the_assistant(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    assert raises_data_error(load_sft, path, tokenizer=tiny_tokenizer).startswith(
        f"{path}:1: field 'messages': the last message must be from the assistant")


# ---------------------------------------------------------------------------- bad input

def test_malformed_jsonl_line_3(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(EXPLICIT_ROWS[0]) + "\n" + json.dumps(EXPLICIT_ROWS[1])
                    + '\n{"prompt": "x", "chosen": \n', encoding="utf-8")
    assert raises_data_error(load_preferences, path).startswith(f"{path}:3: invalid JSON")


def test_row_missing_chosen(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [EXPLICIT_ROWS[0], {"prompt": "x", "rejected": " y"}])
    assert raises_data_error(load_preferences, path).startswith(
        f"{path}:2: field 'chosen': missing (the row has: prompt, rejected)")
    json_path = write_json(tmp_path / "p.json",
                           [EXPLICIT_ROWS[0], {"prompt": "x", "rejected": "y"}])
    assert raises_data_error(load_preferences, json_path).startswith(
        f"{json_path}:1: field 'chosen': missing")  # JSON: 0-based row index


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("e.json", " \n"), ("e.csv", ""),
                                           ("h.csv", "prompt,chosen,rejected\n"), ("a.json", "[]")])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert raises_data_error(load_preferences, path) == f"{path}: no rows"


def test_chosen_identical_to_rejected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl",
                       [{"prompt": "x", "chosen": " same", "rejected": " same"}])
    assert raises_data_error(load_preferences, path).startswith(
        f"{path}:1: field 'rejected': identical to 'chosen'")


@pytest.mark.parametrize("row, field, problem", [
    ({"prompt": 5, "chosen": " a", "rejected": " b"}, "prompt", "expected a string, got int"),
    ({"prompt": "x", "chosen": " ", "rejected": " b"}, "chosen", "empty text"),
    ({"prompt": "x", "chosen": " a", "rejected": " b", "margin": "big"}, "margin",
     "expected a finite number"),
    ({"prompt": "x", "chosen": " a", "rejected": " b", "margin": True}, "margin",
     "expected a finite number"),
])
def test_bad_fields_name_file_line_and_field(tmp_path, row, field, problem):
    path = write_jsonl(tmp_path / "p.jsonl", [EXPLICIT_ROWS[1], row])
    assert raises_data_error(load_preferences, path).startswith(
        f"{path}:2: field '{field}': {problem}")


def test_implicit_prompt_that_swallows_a_response(tmp_path):
    ok = {"chosen": "Q: hi A: yo", "rejected": "Q: hi A: yo there"}
    swallowed = {"chosen": HH_PROMPT, "rejected": HH_PROMPT + " No."}  # chosen is all prompt
    path = write_jsonl(tmp_path / "p.jsonl", [ok, swallowed])
    assert raises_data_error(load_preferences, path) == (
        f"{path}:2: field 'chosen': empty text after removing the shared prompt")
    assert load_preferences(write_jsonl(tmp_path / "ok.jsonl", [ok])) == [
        PreferencePair("Q: hi A:", " yo", " yo there")]


def test_non_object_row(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x"}\n[1, 2]\n', encoding="utf-8")
    assert raises_data_error(read_rows, path) == f"{path}:2: expected a JSON object, got an array"


def test_csv_row_with_a_missing_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\nx, a, b\ny, c\n", encoding="utf-8")
    assert raises_data_error(load_preferences, path).startswith(
        f"{path}:3: field 'rejected': missing")


def test_invalid_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "x", "chosen": " a", "rejected": " b"}\n'
                     b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}\n')
    assert raises_data_error(load_preferences, path) == (
        f"{path}:2: invalid UTF-8 (byte 0xe9); save the file as UTF-8")


# ---------------------------------------------------------------------------- prompt batches

def test_collate_prompts_pads_on_the_left_with_positions_from_the_mask():
    batch = collate_prompts([[5, 6, 7], [8]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_tokenize_prompts_keeps_the_last_tokens_and_counts(tiny_tokenizer, caplog):
    long_prompt = "The cat sees a dog every day. My friend likes an old song again and again."
    full = encode_prompt(long_prompt, tiny_tokenizer)
    assert full[0] == tiny_tokenizer.bos_token_id and len(full) > 8
    with caplog.at_level(logging.WARNING, logger="rlhfkit.data.collate"):
        ids, num_truncated = tokenize_prompts([long_prompt, "Hi"], tiny_tokenizer, 8)
    assert num_truncated == 1 and "truncated 1 of 2 prompts" in caplog.text
    # BOS stays first; the rest is the END of the prompt, which the response continues
    assert ids[0] == [tiny_tokenizer.bos_token_id] + full[-7:]
    assert ids[1] == encode_prompt("Hi", tiny_tokenizer)
    batch = collate_prompts(ids, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["position_ids"][1, -len(ids[1]):].tolist() == list(range(len(ids[1])))


def test_tokenize_prompts_on_long_error_and_bad_option(tiny_tokenizer):
    message = raises_data_error(tokenize_prompts, ["a b c d e f g h i j"], tiny_tokenizer, 4,
                                on_long="error")
    assert "prompt 0 has" in message and "max_prompt_length=4" in message
    with pytest.raises(ConfigError, match="on_long: got 'drop', expected one of truncate, error"):
        tokenize_prompts(["hi"], tiny_tokenizer, 4, on_long="drop")


def test_encode_prompt_does_not_double_a_bos_from_the_template(tiny_tokenizer):
    assert encode_prompt("<|bos|>hi", tiny_tokenizer) == encode_prompt("hi", tiny_tokenizer)


def test_batched_encoding_equals_encoding_each_text_alone(tiny_tokenizer):
    """encode_texts encodes each distinct text once in one batched call; the ids must be
    those of encoding every text by itself, duplicates and the empty text included, and
    rows that came from one distinct text must not share a list."""
    texts = ["The film was good.", "", " spaced  out ", "The film was good.", "<|bos|>hi"]
    alone = [tiny_tokenizer.encode(t, add_special_tokens=False) for t in texts]
    ids = encode_texts(texts, tiny_tokenizer)
    assert ids == alone
    ids[0].append(-1)
    assert ids[3] == alone[3]
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    assert encode_prompts(texts, tiny_tokenizer) == [
        a if a[:1] == [bos] else [bos] + a for a in alone]
    assert encode_responses(texts, tiny_tokenizer) == [a + [eos] for a in alone]
    assert encode_texts([], tiny_tokenizer) == []


# ---------------------------------------------------------------------------- SFT: tokenize, pad

def test_sft_loss_mask_covers_exactly_the_completion_and_eos(tiny_tokenizer):
    examples = [SFTExample("What is 2 + 2?", " The answer is 4."), SFTExample("", "Hi")]
    items, num_truncated = tokenize_sft(examples, tiny_tokenizer, max_length=64)
    assert num_truncated == 0
    eos = tiny_tokenizer.eos_token_id
    for example, item in zip(examples, items):
        completion = tiny_tokenizer.encode(example.completion, add_special_tokens=False) + [eos]
        assert item.input_ids == encode_prompt(example.prompt, tiny_tokenizer) + completion
        assert [t for t, m in zip(item.input_ids, item.loss_mask) if m] == completion
        assert item.loss_mask == sorted(item.loss_mask)  # 0...0 then 1...1
    batch = collate_sft(items, tiny_tokenizer.pad_token_id)
    lengths = [len(item.input_ids) for item in items]
    assert batch["input_ids"].shape == (2, max(lengths))  # longest row, not max_length
    assert batch["attention_mask"].sum(-1).tolist() == lengths  # right padding
    assert batch["loss_mask"][1].tolist()[:lengths[1]] == items[1].loss_mask
    assert batch["loss_mask"][1, lengths[1]:].sum() == 0
    assert batch["loss_mask"].sum() == sum(sum(item.loss_mask) for item in items)


def test_pack_rows_is_first_fit_decreasing():
    assert pack_rows([3, 5, 2, 4], 7) == [[1, 2], [3, 0]]
    assert pack_rows([9, 1], 4) == [[0], [1]]          # too long: a row of its own
    assert pack_rows([2, 2, 2], 6) == [[0, 1, 2]]       # ties keep their order
    assert pack_rows([], 4) == []


def test_packed_sft_rows_restart_positions_and_never_target_across_examples():
    items = [TokenizedSFT([1, 2, 3, 4], [0, 0, 1, 1]), TokenizedSFT([5, 6], [0, 1]),
             TokenizedSFT([7, 8], [1, 1])]        # an example with no prompt: all targets
    batch = collate_packed_sft(items)
    assert batch["attention_mask"] is None
    # rows of the longest example's length: [items 0], [items 1 and 2]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    # token 7 (a target when alone) is no target here: token 6 of another example precedes it
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 1]]
    tail = collate_packed_sft(items[1:], length=6)
    assert tail["input_ids"].tolist() == [[5, 6, 7, 8, 5, 5]]    # the tail repeats token 0
    assert tail["position_ids"].tolist() == [[0, 1, 0, 1, 0, 1]]  # a segment of its own
    assert tail["loss_mask"].tolist() == [[0, 1, 0, 1, 0, 0]]


def test_packed_unique_responses_say_where_each_row_ends():
    a, b, c = [1, 2, 3, 4, 5], [1, 2, 6], [1, 2]
    items = [TokenizedPair(a, b), TokenizedPair(a, c), TokenizedPair(c, b)]
    batch = collate_unique_responses(items, pad_token_id=0, pack=True)
    assert batch["attention_mask"] is None
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 6, 1, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert batch["last_token"].tolist() == [[0, 4], [1, 2], [1, 4]]   # a, b, c
    assert batch["chosen_index"].tolist() == [0, 0, 2]
    assert batch["rejected_index"].tolist() == [1, 2, 1]


def test_sft_eos_is_not_doubled_for_chat_completions(tiny_tokenizer):
    ids = encode_response(" Hello!<|eos|>", tiny_tokenizer)
    assert ids == encode_response(" Hello!", tiny_tokenizer)
    assert ids.count(tiny_tokenizer.eos_token_id) == 1


def test_sft_truncates_the_prompt_from_the_left_and_keeps_the_completion(tiny_tokenizer):
    example = SFTExample("The cat sees a dog every day. My friend likes an old song.", " Yes.")
    completion = encode_response(example.completion, tiny_tokenizer)
    (item,), num_truncated = tokenize_sft([example], tiny_tokenizer, max_length=len(completion) + 4)
    assert num_truncated == 1 and len(item.input_ids) == len(completion) + 4
    prompt = encode_prompt(example.prompt, tiny_tokenizer)
    assert item.input_ids == [prompt[0]] + prompt[-3:] + completion  # BOS kept
    assert sum(item.loss_mask) == len(completion)


# ---------------------------------------------------------------------------- preference batches

def test_preferences_tokenize_and_collate(tiny_tokenizer):
    pairs = [PreferencePair("Is the sky blue?", " Yes, on a clear day.", " No.", 1.5),
             PreferencePair("2 + 2?", " 4", " 5")]
    items, num_truncated = tokenize_preferences(pairs, tiny_tokenizer, max_length=64)
    assert num_truncated == 0
    first = items[0]
    prompt = encode_prompt(pairs[0].prompt, tiny_tokenizer)
    assert first.chosen_input_ids == prompt + encode_response(pairs[0].chosen, tiny_tokenizer)
    assert first.rejected_input_ids == prompt + encode_response(pairs[0].rejected, tiny_tokenizer)
    batch = collate_preferences(items, tiny_tokenizer.pad_token_id)
    longest = max(len(ids) for item in items
                  for ids in (item.chosen_input_ids, item.rejected_input_ids))
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape == (2, longest)
    assert batch["rejected_attention_mask"].sum(-1).tolist() == [
        len(item.rejected_input_ids) for item in items]
    # the last real token of every row (where a reward model reads its score) is EOS
    last = batch["chosen_attention_mask"].sum(-1) - 1
    assert (batch["chosen_input_ids"][torch.arange(2), last] == tiny_tokenizer.eos_token_id).all()
    assert batch["margin"].tolist() == [1.5, 0.0]  # missing margin: plain Bradley-Terry
    assert collate_preferences(items[1:], 0)["margin"] is None


def test_unique_responses_score_each_row_once_and_index_every_pair_by_hand():
    a, b, c = [1, 5, 6, 2], [1, 5, 7, 7, 2], [1, 5, 8, 2]   # three responses to prompt [1, 5]
    items = [TokenizedPair(a, b), TokenizedPair(a, c, 0.5), TokenizedPair(c, b)]
    batch = collate_unique_responses(items, pad_token_id=0)
    assert batch["input_ids"].tolist() == [a + [0], b, c + [0]]   # 3 rows for 3 pairs, not 6
    assert batch["attention_mask"].sum(-1).tolist() == [4, 5, 4]
    assert batch["chosen_index"].tolist() == [0, 0, 2]
    assert batch["rejected_index"].tolist() == [1, 2, 1]
    assert batch["margin"].tolist() == [0.0, 0.5, 0.0]
    # rows in no other pair: the 2B rows of collate_preferences, chosen then rejected
    lone = collate_unique_responses([TokenizedPair(a, b), TokenizedPair(c, [1, 9, 2])], 0)
    assert lone["chosen_index"].tolist() == [0, 2] and lone["rejected_index"].tolist() == [1, 3]
    assert lone["margin"] is None


def test_response_groups_join_pairs_that_share_a_row_by_hand():
    a, b, c, d, e, f = ([1, 5, v, 2] for v in range(10, 16))
    items = [TokenizedPair(a, b), TokenizedPair(d, e), TokenizedPair(a, c),
             TokenizedPair(c, f), TokenizedPair([1, 6, 10, 2], b)]  # last: another prompt
    # (a>b) (a>c) (c>f) share rows; (d>e) shares none; the last shares b with the first
    assert response_groups(items) == ((0, 2, 3, 4), (1,))
    assert response_groups(items[1:2] + items[3:4]) == ((0,), (1,))
    # a labeler's K = 4 responses to a prompt: all 6 pairs form one group, twice over
    rows = [[1, 7, v, 2] for v in range(4)] + [[1, 8, v, 2] for v in range(4)]
    pairs = [TokenizedPair(rows[o + i], rows[o + j]) for o in (0, 4)
             for i in range(4) for j in range(i + 1, 4)]
    assert response_groups(pairs) == (tuple(range(6)), tuple(range(6, 12)))


def test_long_pair_cuts_one_shared_prompt_and_keeps_both_responses(tiny_tokenizer):
    pair = PreferencePair("The cat sees a dog every day. My friend likes an old song.",
                          " Yes, on a clear day it is.", " No.")
    chosen = encode_response(pair.chosen, tiny_tokenizer)
    (item,), num_truncated = tokenize_preferences([pair], tiny_tokenizer, len(chosen) + 3)
    assert num_truncated == 1
    shared = item.chosen_input_ids[:3]
    assert item.chosen_input_ids == shared + chosen
    assert item.rejected_input_ids == shared + encode_response(pair.rejected, tiny_tokenizer)


def test_bad_lengths_are_config_errors(tiny_tokenizer):
    with pytest.raises(ConfigError, match="max_length"):
        tokenize_sft([SFTExample("", "hi")], tiny_tokenizer, max_length=0)
    with pytest.raises(ConfigError, match="max_prompt_length"):
        tokenize_prompts(["hi"], tiny_tokenizer, max_prompt_length=True)


# ---------------------------------------------------------------------------- property

_FIELDS = ["prompt", "chosen", "rejected", "margin", "messages", "completion", "text"]
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                  "content": st.text(max_size=8)})
_ODD_MESSAGE = st.dictionaries(st.sampled_from(["role", "content"]),
                               st.one_of(st.text(max_size=5), st.integers()), max_size=2)
_CHAT = st.lists(st.one_of(_MESSAGE, _MESSAGE, _ODD_MESSAGE), max_size=3)
_VALUES = st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.booleans(),
                    st.none(), _CHAT)
_ANY_ROW = st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=5)
_TEXT_PAIR = st.builds(lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r},
                       st.text(max_size=10), st.text(min_size=1, max_size=10),
                       st.text(min_size=1, max_size=10))
_REPLY = st.builds(lambda c: {"role": "assistant", "content": c}, st.text(min_size=1, max_size=8))
_CHAT_PAIR = st.builds(lambda ctx, c, r: {"chosen": ctx + [c], "rejected": ctx + [r]},
                       st.lists(_MESSAGE, min_size=1, max_size=2), _REPLY, _REPLY)
_CHAT_SFT = st.builds(lambda ctx, c: {"messages": ctx + [c]},
                      st.lists(_MESSAGE, max_size=2), _REPLY)
_LINE = st.one_of(st.sampled_from(["", "{", "[1, 2]", '"text"', "null"]), st.text(max_size=20),
                  *(row.map(json.dumps) for row in (_ANY_ROW, _TEXT_PAIR, _CHAT_PAIR, _CHAT_SFT)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_LINE, max_size=5),
       junk_bytes=st.one_of(st.just(b""), st.just(b"\n"), st.binary(max_size=3)))
def test_random_jsonl_loads_or_raises_data_error(tmp_path_factory, tiny_tokenizer, lines,
                                                 junk_bytes):
    path = tmp_path_factory.getbasetemp() / "property.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8") + junk_bytes)
    for load in (load_preferences, load_sft, load_prompts):
        try:
            load(path, tokenizer=tiny_tokenizer)
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path))


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=40), suffix=st.sampled_from([".csv", ".json", ".jsonl"]))
def test_random_bytes_read_or_raise_data_error(tmp_path_factory, content, suffix):
    path = tmp_path_factory.getbasetemp() / f"bytes{suffix}"
    path.write_bytes(content)
    try:
        read_rows(path)
    except DataError:
        pass


# ---------------------------------------------------------------------------- fuzzing every loader
#
# Malformed data of every kind, in every file format, through every loader and its
# tokenization: each case ends in a clean load that keeps every row (no row is ever dropped
# without a count) or in one DataError line that starts with the file's name. Anything else
# — a traceback from json, the csv module, pyarrow or the tokenizer — fails the test.

_HUGE = "word " * 40_000                  # 200 kB: far longer than any context
_ODD_TEXT = st.sampled_from(["", " ", "\n", "\t \n", _HUGE, "\ud800 a lone surrogate",
                             "é" * 40, "<|eos|>", "\x00", "\u2028line\u2029", "🙂" * 10])
_FUZZ_TEXT = st.one_of(st.text(max_size=30), _ODD_TEXT)
_FUZZ_VALUE = st.one_of(_FUZZ_TEXT, st.integers(), st.just(10 ** 400), st.booleans(),
                        st.floats(allow_nan=True, allow_infinity=True), st.none(), _CHAT,
                        st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_FUZZ_ROW = st.dictionaries(st.sampled_from(_FIELDS + ["id", "extra"]), _FUZZ_VALUE, max_size=6)
# A well-formed row for every loader at once (prompt; prompt + completion; prompt + chosen +
# rejected), so that one bad field is what a loader meets, not a wrong layout.
_GOOD_TEXT = st.text(min_size=1, max_size=20).filter(str.strip)
_GOOD_ROW = st.builds(lambda p, c, a, b: {"prompt": p, "completion": c, "chosen": a,
                                          "rejected": a + b},
                      st.text(max_size=20), _GOOD_TEXT, _GOOD_TEXT, _GOOD_TEXT)
# Values that have broken a loader somewhere: half of the edits use one of them.
_NASTY = st.sampled_from(["", "   ", "\ud800", "\udfff tail", _HUGE, 10 ** 400, -(10 ** 400),
                          float("nan"), float("inf"), True, None, [], {}, 0, [{"role": "user"}],
                          [{"role": "assistant", "content": 3}], {"content": "x"}, "\x00"])
_OWN_FIELDS = ["prompt", "completion", "chosen", "rejected", "margin"]
_EDIT = st.tuples(st.integers(0, 5), st.sampled_from(_OWN_FIELDS * 3 + _FIELDS + ["extra"]),
                  st.one_of(st.just("delete"), _NASTY, _NASTY, _FUZZ_VALUE))


@st.composite
def _fuzz_rows(draw) -> list[dict]:
    """Well-formed rows with up to 3 edits (a field set to an odd value, deleted, or added),
    or rows of random fields, or a mix with chat rows."""
    if draw(st.booleans()):
        rows = draw(st.lists(_GOOD_ROW, min_size=1, max_size=6))
        for index, name, value in draw(st.lists(_EDIT, max_size=3)):
            row = rows[index % len(rows)]
            if value == "delete":
                row.pop(name, None)
            else:
                row[name] = value
        return rows
    return draw(st.lists(st.one_of(_FUZZ_ROW, _TEXT_PAIR, _CHAT_PAIR, _CHAT_SFT), max_size=6))


_ROWS = _fuzz_rows()
# None half of the time: a file that is not damaged byte-wise must also keep every row.
_MUTATION = st.one_of(st.sampled_from([None, None, None]),
                      st.tuples(st.just("truncate"), st.floats(0, 1)),
                      st.tuples(st.just("bad_utf8"), st.floats(0, 1),
                                st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])),
                      st.tuples(st.just("junk"), st.floats(0, 1), st.binary(min_size=1, max_size=8)))
_FORMATS = st.sampled_from(["jsonl", "jsonl", "json", "csv", "parquet"])


def _parquet_safe(rows: list[dict]) -> list[dict]:
    """Parquet columns hold one type: keep text (made encodable), JSON-encode the rest."""
    def plain(v):
        if isinstance(v, str):
            return v.encode("utf-8", "replace").decode("utf-8")
        return None if v is None else json.dumps(v, default=str)
    return [{k: plain(v) for k, v in row.items()} for row in rows]


def _write_fuzz(path, fmt: str, rows: list[dict]) -> None:
    if fmt == "jsonl":
        path.write_bytes("".join(json.dumps(r) + "\n" for r in rows).encode())
    elif fmt == "json":
        path.write_bytes(json.dumps(rows).encode())
    elif fmt == "csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="", encoding="utf-8", errors="surrogatepass") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in rows])
    else:
        pq.write_table(pa.Table.from_pylist(_parquet_safe(rows)), path)


def _mutate(path, mutation) -> None:
    if mutation is None:
        return
    data = path.read_bytes()
    at = int(mutation[1] * len(data))
    if mutation[0] == "truncate":
        data = data[:at]
    else:
        data = data[:at] + mutation[2] + data[at:]
    path.write_bytes(data)


_FUZZ_CASES = {"loaded": 0, "data_error": 0}


@settings(max_examples=400, deadline=timedelta(seconds=30),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])  # caplog: cleared per call
@given(fmt=_FORMATS, rows=_ROWS, mutation=_MUTATION)
def test_every_loader_survives_malformed_files_in_every_format(tmp_path_factory, tiny_tokenizer,
                                                               caplog, fmt, rows, mutation):
    path = tmp_path_factory.getbasetemp() / f"fuzz.{fmt}"
    _write_fuzz(path, fmt, rows)
    _mutate(path, mutation)
    steps = ((load_prompts, lambda r: tokenize_prompts(r, tiny_tokenizer, 16)),
             (load_sft, lambda r: tokenize_sft(r, tiny_tokenizer, 24)),
             (load_preferences, lambda r: tokenize_preferences(r, tiny_tokenizer, 24)))
    for load, tokenize in steps:
        caplog.clear()
        try:
            records = load(path, tokenizer=tiny_tokenizer)
            items, cut = tokenize(records)  # 16-24 tokens: many rows are longer than that
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
            _FUZZ_CASES["data_error"] += 1
            continue
        _FUZZ_CASES["loaded"] += 1
        assert len(items) == len(records)  # tokenization never drops a row
        if mutation is None:
            assert len(records) == len(rows)  # nor does loading
        if cut:
            assert f"truncated {cut} of {len(records)}" in caplog.text  # counted in the log


def test_the_fuzzing_saw_both_outcomes():
    """Guards the fuzz test above against testing nothing (run in the same session)."""
    if _FUZZ_CASES["loaded"] + _FUZZ_CASES["data_error"] == 0:
        pytest.skip("the fuzz test did not run in this session")
    print(f"fuzzed loader calls: {_FUZZ_CASES}")
    assert _FUZZ_CASES["loaded"] > 0 and _FUZZ_CASES["data_error"] > 0


@pytest.mark.parametrize("line, problem", [
    ('{"prompt": "a", "completion": " b", "margin": 1' + "0" * 5000 + "}",
     ":2: invalid JSON: Exceeds the limit (4300 digits)"),
    ('{"prompt": ' + "[" * 50_000 + "}", ":2: invalid JSON: nested too deeply"),
    ('{"prompt": "\\ud800", "completion": " b"}', ":2: field 'prompt': invalid text"),
])
def test_json_that_breaks_pythons_parser_or_unicode_is_a_data_error(tmp_path, line, problem):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": " b"}\n' + line + "\n")
    assert raises_data_error(load_sft, path).startswith(f"{path}{problem}")


def test_a_margin_too_large_for_a_float_is_a_data_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": " b", "rejected": " c",
                                               "margin": 10 ** 400}])
    assert raises_data_error(load_preferences, path).startswith(
        f"{path}:1: field 'margin': expected a finite number, got 1000")


def test_a_csv_value_longer_than_128_kib_loads(tmp_path):
    path = write_csv(tmp_path / "s.csv", [{"prompt": "a", "completion": " " + _HUGE}])
    assert load_sft(path)[0].completion == " " + _HUGE
