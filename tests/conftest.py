"""Shared fixtures: a generated English corpus, a tokenizer trained on it, tiny models.

Everything is built offline from code in a few seconds, once per test session.
"""

from __future__ import annotations

import os
import random

# Tests build every model from code; they must never reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from rlhfkit.models.tiny import build_tiny_model, train_tokenizer

_SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "our teacher", "a small bird",
             "the movie", "this book", "the weather", "her brother", "the robot", "a farmer"]
_VERBS = ["likes", "sees", "finds", "wants", "loves", "hates", "reads", "watches", "builds",
          "carries", "remembers", "forgets"]
_OBJECTS = ["a red apple", "the long road", "some warm bread", "an old song", "the blue sea",
            "a quiet garden", "the city lights", "a funny story", "three green boxes",
            "the morning news", "a cold river", "twelve small stones"]
_TAILS = ["every day.", "in the evening.", "with great joy.", "but not today.", "again and again.",
          "because it is nice.", "near the house.", "before lunch.", "after the rain.", "quietly."]
_OPINIONS = ["I loved this movie, it was wonderful and fun.",
             "This film was terrible, boring and far too long.",
             "What a great story, the actors were excellent!",
             "The plot was bad and the ending was awful.",
             "It is a good book with a happy ending.",
             "Nothing happened and I was sad the whole time."]


def make_corpus_lines(n_lines: int = 400, seed: int = 0) -> list[str]:
    """`n_lines` varied English sentences (plus some digits and sums), deterministic."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        kind = i % 4
        if kind == 3:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            lines.append(f"What is {a} + {b}? The answer is {a + b}.")
        elif kind == 2:
            lines.append(rng.choice(_OPINIONS))
        else:
            s, v, o, t = (rng.choice(x) for x in (_SUBJECTS, _VERBS, _OBJECTS, _TAILS))
            lines.append(f"{s.capitalize()} {v} {o} {t}")
    return lines


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Path to a small English text file, one sentence per line."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(make_corpus_lines()) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus):
    """A byte-level BPE tokenizer (pad != eos, left padding, chat template), vocab <= 1000."""
    return train_tokenizer(tiny_corpus, vocab_size=1000)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tiny_corpus, tmp_path_factory):
    """A folder holding a random tiny GPT-2 and its tokenizer (from_pretrained loads it)."""
    return build_tiny_model("gpt2", "tiny", tiny_corpus, tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_corpus, tmp_path_factory):
    """A folder holding a random tiny Llama and its tokenizer (from_pretrained loads it)."""
    return build_tiny_model("llama", "tiny", tiny_corpus, tmp_path_factory.mktemp("llama"))
