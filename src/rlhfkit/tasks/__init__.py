"""Built-in worlds for the demo and the tests: a corpus, prompts and a way to score.

    sentiment   write positive movie reviews; a simulated human labels pairs, a reward
                model learns from them, PPO optimises it (the lecture's task).
    arithmetic  add two numbers; the reward is verifiable (right or wrong), no reward
                model needed, so the critic-free GRPO fits.

Every task gives the same five things (see `Task`), so the demo can run either one:

    task = get_task("sentiment")
    rows = task.make_sft_corpus(2000, seed=0)    # [{"prompt", "completion"}]
    prompts = task.make_prompts(64, seed=1)      # [str]
    task.eval_fn(prompts, responses)             # [float], the gold score / correctness
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rlhfkit.errors import ConfigError
from rlhfkit.tasks import arithmetic, sentiment


@dataclass(frozen=True)
class Task:
    """What the demo needs to know about a built-in task.

    `reward_fn` is the training reward when it is a function (a verifiable reward), None
    when a reward model is learned from the task's labeler. `eval_fn` is the ground truth
    used only for evaluation.
    """

    name: str
    description: str
    algorithm: str                                         # default RL algorithm
    make_sft_corpus: Callable[..., list[dict]]             # (n, seed) -> [{"prompt", "completion"}]
    make_prompts: Callable[..., list[str]]                 # (n, seed) -> [prompt]
    eval_fn: Callable[[list[str], list[str]], list[float]]
    reward_fn: Callable[[list[str], list[str]], list[float]] | None = None


TASKS: dict[str, Task] = {
    "sentiment": Task(
        name="sentiment",
        description="write positive movie reviews; a biased simulated human labels pairs "
                    "for a learned reward model",
        algorithm="ppo",
        make_sft_corpus=sentiment.make_corpus,
        make_prompts=sentiment.make_prompts,
        eval_fn=sentiment.gold_scores,
    ),
    "arithmetic": Task(
        name="arithmetic",
        description="add two numbers ('37+58='); verifiable 0/1 reward, no reward model",
        algorithm="grpo",
        make_sft_corpus=arithmetic.make_sft_corpus,
        make_prompts=arithmetic.make_problems,
        eval_fn=arithmetic.reward,
        reward_fn=arithmetic.reward,
    ),
}


def get_task(name: str) -> Task:
    """The built-in task `name`; a `ConfigError` naming the choices for an unknown one."""
    if name not in TASKS:
        raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task", "arithmetic", "sentiment"]
