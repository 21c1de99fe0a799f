"""Data: read files, detect their layout, tokenize and batch.

    readers.py   read_rows: JSONL, JSON, CSV, Parquet, save_to_disk folders, hub ids
    formats.py   SFTExample, PreferencePair; load_prompts, load_sft, load_preferences
    collate.py   tokenize_* (one tokenization for SFT, reward model and PPO) and
                 collate_* (left-padded prompts, right-padded training rows)
"""

from rlhfkit.data.collate import (TokenizedPair, TokenizedSFT, collate_packed_sft,
                                  collate_preferences, collate_prompts, collate_sft,
                                  collate_unique_responses, encode_prompt, encode_prompts,
                                  encode_response, encode_responses, encode_texts, pack_rows,
                                  pack_sequences, response_groups, tokenize_preferences,
                                  tokenize_prompts, tokenize_sft, truncate_left)
from rlhfkit.data.formats import (PreferencePair, SFTExample, load_preferences, load_prompts,
                                  load_sft, split_shared_prompt)
from rlhfkit.data.readers import read_rows

__all__ = [
    "read_rows",
    "SFTExample", "PreferencePair", "load_prompts", "load_sft", "load_preferences",
    "split_shared_prompt",
    "encode_texts", "encode_prompt", "encode_prompts", "encode_response", "encode_responses",
    "truncate_left",
    "tokenize_prompts", "collate_prompts",
    "TokenizedSFT", "tokenize_sft", "collate_sft", "pack_rows", "pack_sequences",
    "collate_packed_sft",
    "TokenizedPair", "tokenize_preferences", "collate_preferences", "collate_unique_responses",
    "response_groups",
]
