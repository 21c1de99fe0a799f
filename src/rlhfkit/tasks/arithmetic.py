"""The arithmetic task: a verifiable reward, for the critic-free algorithms.

Prompts are two-operand additions, `"37+58="`; the response is the answer, `"95"`. The
reward needs no reward model: 1.0 when the answer is right, else 0.0 (as in nanochat's
GSM8K RL and DeepSeek's GRPO with verifiable rewards).

The SFT corpus is deliberately noisy: a share `noise` of its completions are plausible
mistakes (off by one, a dropped carry), so the SFT model is imperfect and RL has room to
raise its accuracy.

How a response is read (`parse_answer`): leading whitespace is skipped and the integer that
starts the response is the answer; anything after it is ignored. So `" 95 and more"` earns
1.0 for `"37+58="`. Rollouts are cut at EOS, and a policy gains nothing by writing more
after the number, so there is nothing to hack in the tail; checkers of GSM8K-style tasks
also take the first (or a marked) number. A response that starts with anything else
("the answer is 95"), or a decimal ("95.0"), is unreadable and earns 0.0.
"""

from __future__ import annotations

import random
import re

from rlhfkit.errors import RlhfkitError

# The last "a+b=" in the prompt, so a chat-formatted prompt works too.
_PROBLEM = re.compile(r"(\d+)\s*\+\s*(\d+)\s*=")
# An optionally signed integer at the start, not the integer part of a decimal or "1,000".
_ANSWER = re.compile(r"\s*([-+]?\d+)(?![\d.,]\d|\d)")


def make_problems(n: int, seed: int = 0, max_operand: int = 99) -> list[str]:
    """`n` prompts `"a+b="` with `0 <= a, b <= max_operand`, deterministic given `seed`."""
    if max_operand < 0:
        raise ValueError(f"max_operand must be >= 0, got {max_operand}")
    rng = random.Random(seed)
    return [f"{rng.randint(0, max_operand)}+{rng.randint(0, max_operand)}=" for _ in range(n)]


def _mistake(rng: random.Random, answer: int) -> int:
    """A plausible wrong answer: off by one or two, or a dropped / extra carry (+-10)."""
    while True:
        wrong = answer + rng.choice((-10, -2, -1, 1, 2, 10))
        if wrong >= 0:
            return wrong


def make_sft_corpus(n: int, seed: int = 0, noise: float = 0.5,
                    max_operand: int = 99) -> list[dict]:
    """`n` SFT rows `{"prompt": "37+58=", "completion": "95"}`, deterministic given `seed`.

    Each completion is wrong with probability `noise` (independently), so about a share
    `noise` of the corpus is wrong.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    rng = random.Random(seed)
    rows = []
    for prompt in make_problems(n, seed, max_operand):
        answer = solve(prompt)
        if rng.random() < noise:
            answer = _mistake(rng, answer)
        rows.append({"prompt": prompt, "completion": str(answer)})
    return rows


def solve(prompt: str) -> int:
    """The right answer to the last `a+b=` in `prompt`."""
    problems = _PROBLEM.findall(prompt)
    if not problems:
        raise RlhfkitError(f"arithmetic: prompt {prompt!r} is not an addition like '37+58='")
    a, b = problems[-1]
    return int(a) + int(b)


def parse_answer(response: str) -> int | None:
    """The integer that starts `response` (after whitespace), or None; see the module
    docstring."""
    m = _ANSWER.match(response)
    return int(m.group(1)) if m else None


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    """1.0 where the response's leading integer is the sum, else 0.0.

    A reward function `fn(prompts, responses) -> list[float]`, one score per sequence.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return [1.0 if parse_answer(r) == solve(p) else 0.0 for p, r in zip(prompts, responses)]


def accuracy(prompts: list[str], responses: list[str]) -> float:
    """The share of right answers (mean `reward`)."""
    scores = reward(prompts, responses)
    if not scores:
        raise ValueError("accuracy of no responses")
    return sum(scores) / len(scores)
