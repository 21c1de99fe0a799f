"""Response pairs to be judged: two responses to one prompt, and how to make them.

A pairs file is JSON Lines (or any file `rlhfkit.data.read_rows` reads), one pair a row:

    {"pair_id": "3f2a...", "prompt": "The movie was", "response_a": " great.",
     "response_b": " long."}

`pair_id` is optional on input: without it the id is a hash of the three texts, so the
same pair always gets the same id, and judgements written in an earlier session find their
pair again when the pairs are sampled or prepared anew. `rlhfkit sample-pairs` writes such a
file from a model, ahead of time, so labelling needs no model in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import REQUIRED, option
from rlhfkit.errors import DataError, RlhfkitError

log = logging.getLogger("rlhfkit")

__all__ = ["Pair", "make_pair_id", "read_pairs", "write_pairs", "sample_pairs",
           "SamplingOptions", "SamplePairsConfig", "main"]

MAX_TRIES = 4   # rounds of sampling for a pair whose two responses are identical or blank


@dataclass(frozen=True)
class Pair:
    """Two responses to one prompt; which one is better is what a person decides."""
    pair_id: str
    prompt: str
    response_a: str
    response_b: str

    def as_row(self) -> dict:
        return {"pair_id": self.pair_id, "prompt": self.prompt,
                "response_a": self.response_a, "response_b": self.response_b}


def make_pair_id(prompt: str, response_a: str, response_b: str) -> str:
    """A stable 16-hex-digit id of the three texts (JSON-encoded, so no two texts collide by
    concatenation)."""
    blob = json.dumps([prompt, response_a, response_b], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def is_usable(response_a: str, response_b: str) -> bool:
    """A pair is worth a person's time only with two different, non-blank responses."""
    return bool(response_a.strip()) and bool(response_b.strip()) and response_a != response_b


# ---------------------------------------------------------------------------- files

def read_pairs(source: str | os.PathLike) -> list[Pair]:
    """Every pair of a pairs file, in file order; a bad row is a one-line DataError."""
    pairs, seen = [], {}
    for where, row in _pair_rows(source):
        texts = []
        for field in ("prompt", "response_a", "response_b"):
            value = row.get(field)
            if not isinstance(value, str):
                present = ", ".join(sorted(row)) or "nothing"
                problem = (f"missing (the row has: {present})" if value is None
                           else f"expected a string, got {type(value).__name__}")
                raise DataError(source, where, field, problem)
            texts.append(value)
        if not is_usable(texts[1], texts[2]):
            raise DataError(source, where, "response_b", "a pair needs two different, "
                            "non-blank responses")
        pair_id = row.get("pair_id") or make_pair_id(*texts)
        if not isinstance(pair_id, str) or len(pair_id) > 128:
            raise DataError(source, where, "pair_id", "expected a string of at most 128 "
                            "characters")
        if pair_id in seen:
            raise DataError(source, where, "pair_id", f"the same pair as row {seen[pair_id]}")
        seen[pair_id] = where
        pairs.append(Pair(pair_id, *texts))
    return pairs


def _pair_rows(source: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line, row) of a JSON Lines file, read here; any other layout through
    `rlhfkit.data.read_rows`, whose package imports torch (seconds), which a label server
    reading the usual .jsonl need not wait for."""
    path = Path(source)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        from rlhfkit.data import read_rows
        return read_rows(source)
    rows = []
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(path, None, None, "invalid UTF-8; save the file as UTF-8") from None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, number, None, f"invalid JSON: {err.msg} (column {err.colno})") \
                from None
        if not isinstance(row, dict):
            raise DataError(path, number, None, "expected a JSON object")
        rows.append((number, row))
    if not rows:
        raise DataError(path, None, None, "no rows")
    return rows


def write_pairs(path: str | os.PathLike, pairs: list[Pair]) -> Path:
    """Write `pairs` as JSON Lines, atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for pair in pairs:
                f.write(json.dumps(pair.as_row(), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------- sampling

@dataclass
class SamplingOptions:
    """How the two responses of a pair are drawn from the model."""
    max_new_tokens: int = option(64, "longest response, in tokens", gt=0)
    temperature: float = option(1.0, "sampling temperature (> 0: two greedy responses would "
                                     "be the same)", gt=0)
    top_p: float = option(1.0, "nucleus sampling threshold (1: off)", gt=0, le=1)
    top_k: int = option(0, "sample from the k most likely tokens (0: off)", ge=0)
    seed: int = option(0, "random seed of the sampler")
    batch_size: int = option(32, "responses generated per forward pass", gt=0)
    max_prompt_length: int = option(256, "prompt tokens kept (the end of a longer prompt)", gt=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    trust_remote_code: bool = option(False, "allow models that ship their own Python code")


def sample_pairs(model: str, prompts: str, pairs_per_prompt: int,
                 opts: SamplingOptions) -> list[Pair]:
    """`pairs_per_prompt` pairs of sampled responses for every prompt of the `prompts` file.

    A pair with identical or blank responses is sampled again (up to MAX_TRIES rounds in
    all), then dropped with a warning; so is a pair that repeats another one exactly.
    """
    import torch  # lazy: labelling from a prepared file never imports torch

    from rlhfkit.data import load_prompts
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.recipes.common import pick_device

    # 1. prompts first: a malformed file fails before the model is loaded
    tokenizer = load_tokenizer(model, trust_remote_code=opts.trust_remote_code)
    texts = load_prompts(prompts, tokenizer)
    device = pick_device(opts.device)
    policy = load_causal_lm(model, tokenizer, trust_remote_code=opts.trust_remote_code)
    policy.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    # 2. sample every pair, then again the ones that came out unusable
    todo = [prompt for prompt in texts for _ in range(pairs_per_prompt)]
    slots: list[tuple[str, str, str] | None] = [None] * len(todo)
    for _ in range(MAX_TRIES):
        missing = [i for i, slot in enumerate(slots) if slot is None]
        if not missing:
            break
        responses = _sample_texts(policy, tokenizer, [todo[i] for i in missing for _ in (0, 1)],
                                  opts, generator)
        for k, i in enumerate(missing):
            a, b = responses[2 * k], responses[2 * k + 1]
            if is_usable(a, b):
                slots[i] = (todo[i], a, b)
    # 3. ids, without exact repeats
    pairs, seen = [], set()
    for slot in slots:
        if slot is not None and make_pair_id(*slot) not in seen:
            seen.add(make_pair_id(*slot))
            pairs.append(Pair(make_pair_id(*slot), *slot))
    if len(pairs) < len(todo):
        log.warning("dropped %d of %d pairs: identical, blank or repeated responses after %d "
                    "tries", len(todo) - len(pairs), len(todo), MAX_TRIES)
    return pairs


def _sample_texts(policy, tokenizer, prompts: list[str], opts: SamplingOptions,
                  generator) -> list[str]:
    from rlhfkit.generation import Sampling, generate_texts
    sampling = Sampling(opts.max_new_tokens, opts.temperature, opts.top_k, opts.top_p)
    texts, _ = generate_texts(policy, tokenizer, prompts, sampling, generator,
                              batch_size=opts.batch_size, max_prompt_length=opts.max_prompt_length)
    return texts


# ---------------------------------------------------------------------------- sample-pairs

@dataclass
class SamplePairsConfig:
    """Options of `rlhfkit sample-pairs`."""
    model: str = option(REQUIRED, "the model to sample from (usually the SFT model): folder "
                                  "or hub id")
    prompts: str = option(REQUIRED, "prompts file (JSONL/JSON/CSV/Parquet with a 'prompt' or "
                                    "'messages' column)")
    out: str = option(REQUIRED, "JSONL file of pairs to write (read by `rlhfkit label pairs=...`)")
    pairs_per_prompt: int = option(1, "pairs sampled for each prompt", gt=0)
    overwrite: bool = option(False, "replace `out` if it exists")
    sampling: SamplingOptions = option(SamplingOptions, "how responses are sampled")


def main(cfg: SamplePairsConfig) -> int:
    """`rlhfkit sample-pairs`: sample pairs now, label them later with no model in memory."""
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise RlhfkitError(f"'{out}' already exists; pass overwrite=true to replace it")
    pairs = sample_pairs(cfg.model, cfg.prompts, cfg.pairs_per_prompt, cfg.sampling)
    if not pairs:
        raise RlhfkitError("every sampled pair had identical or blank responses; raise "
                           "sampling.temperature or sampling.max_new_tokens")
    write_pairs(out, pairs)
    print(f"wrote {len(pairs)} pairs to {out}; label them with: rlhfkit label pairs={out} "
          f"out=prefs.jsonl")
    return 0
