"""Where the score of a response comes from: a reward model, a Python function, or a
weighted sum of several.

Every scorer is called with a `ScoreRequest` — the texts and the policy's token ids of one
batch of rollouts — and returns one float32 score per response, shape (B,).

- `RewardModelScorer`: a reward model checkpoint, ours or any Hugging Face
  sequence-classification model with one label. With the policy's tokenizer it reads the
  policy's own token ids; with a different tokenizer it decodes the text and re-encodes it
  the way the reward model was trained (prompt and response encoded separately, EOS
  appended when the response stopped). Optional normalisation with the mean and std the
  reward-model recipe stored in the model's config.
- `FunctionScorer`: `fn(prompts, responses) -> list[float]`, imported from
  `module:function` or `path/to/file.py:function` — only from the place the user named: a
  file is executed from exactly that path (its folder is not added to `sys.path`), a module
  by the ordinary import system; nothing is imported by any other name.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from rlhfkit.data.collate import collate_prompts, encode_prompts, encode_responses
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models import get_score_stats, load_reward_model, score_sequences


@dataclass
class ScoreRequest:
    """One batch of rollouts to score. Shapes: B rollouts, P prompt, T response tokens."""
    prompts: list[str]            # prompt texts as given to the policy
    responses: list[str]          # response texts, decoded up to (without) the EOS
    prompt_ids: torch.Tensor      # (B, P) left-padded prompt ids (policy tokenizer)
    prompt_mask: torch.Tensor     # (B, P)
    response_ids: torch.Tensor    # (B, T) right-padded response ids (policy tokenizer)
    response_mask: torch.Tensor   # (B, T) 1 up to and including the EOS
    has_eos: torch.Tensor         # (B,) bool


def same_tokenizer(a, b) -> bool:
    """Two tokenizers that map every string to the same ids (same vocab and specials)."""
    return (a is b) or (len(a) == len(b) and a.get_vocab() == b.get_vocab()
                        and a.eos_token_id == b.eos_token_id and a.bos_token_id == b.bos_token_id)


class RewardModelScorer:
    """Scores with a frozen reward model; see the module docstring."""

    def __init__(self, path: str, policy_tokenizer, *, normalize: bool = True,
                 batch_size: int = 64, dtype: str = "auto", device: str | torch.device = "cpu",
                 trust_remote_code: bool = False):
        self.model, self.tokenizer = load_reward_model(path, dtype=dtype,
                                                       trust_remote_code=trust_remote_code)
        self.model.to(device).eval().requires_grad_(False)
        self.name, self.batch_size, self.device = f"reward model '{path}'", batch_size, device
        self.reuse_ids = same_tokenizer(self.tokenizer, policy_tokenizer)
        stats = get_score_stats(self.model) if normalize else None
        self.mean, self.std = stats if stats else (0.0, 1.0)

    def _encode(self, req: ScoreRequest) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and mask for the reward model: (B, L)."""
        if self.reuse_ids:
            return (torch.cat([req.prompt_ids, req.response_ids], 1),
                    torch.cat([req.prompt_mask, req.response_mask], 1))
        prompts = encode_prompts(req.prompts, self.tokenizer)
        responses = encode_responses(req.responses, self.tokenizer)
        rows = [p + (r if stopped else r[:-1])  # no EOS on a truncated response
                for p, r, stopped in zip(prompts, responses, req.has_eos.tolist())]
        batch = collate_prompts(rows, self.tokenizer.pad_token_id)
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def __call__(self, req: ScoreRequest) -> torch.Tensor:
        ids, mask = self._encode(req)
        scores = [score_sequences(self.model, ids[i:i + self.batch_size].to(self.device),
                                  mask[i:i + self.batch_size].to(self.device))
                  for i in range(0, ids.shape[0], self.batch_size)]
        return ((torch.cat(scores) - self.mean) / self.std).float().cpu()


def load_function(spec: str) -> Callable:
    """Import `fn` from "package.module:fn" or "path/to/file.py:fn"."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward function: expected 'module:function' or 'file.py:function', "
                          f"got {spec!r}")
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name).expanduser())
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # the user's module failed to import: one line, not a traceback
            raise ConfigError(f"reward function: cannot import module '{module_name}': "
                              f"{type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward function: '{module_name}' has no function '{attr}'")
    return fn


def _import_file(path: Path):
    """Execute the file at `path` as a module of its own name (registered, so dataclasses
    and pickling inside it work), without adding its folder to sys.path."""
    if not path.is_file():
        raise ConfigError(f"reward function: no such file '{path}'")
    name = f"rlhfkit_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # a syntax error or a failing import in the user's file
        del sys.modules[name]
        line = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        raise ConfigError(f"reward function: importing '{path}' failed{line}: "
                          f"{type(err).__name__}: {err}") from None
    return module


class FunctionScorer:
    """Scores with `fn(prompts, responses) -> list[float]`; checks what it returns."""

    def __init__(self, fn: Callable | str):
        self.fn = load_function(fn) if isinstance(fn, str) else fn
        self.name = f"reward function '{fn if isinstance(fn, str) else fn.__name__}'"

    def __call__(self, req: ScoreRequest) -> torch.Tensor:
        try:
            out = self.fn(list(req.prompts), list(req.responses))
        except Exception as err:  # the user's code: report it in one line, keep the cause
            raise RlhfkitError(f"{self.name} raised {type(err).__name__}: {err}") from err
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError, OverflowError):
            raise RlhfkitError(f"{self.name} must return a list of numbers, got "
                               f"{type(out).__name__}") from None
        if len(values) != len(req.responses):
            raise RlhfkitError(f"{self.name} returned {len(values)} scores for "
                               f"{len(req.responses)} responses")
        return torch.tensor(values, dtype=torch.float32)


class WeightedSum:
    """Σ_i w_i · scorer_i(request): combine reward models and functions."""

    def __init__(self, parts: Sequence[tuple[float, Callable]]):
        if not parts:
            raise ConfigError("reward: no reward model or function was given")
        self.parts = list(parts)
        names = [getattr(s, "name", str(s)) for _, s in self.parts]
        self.name = names[0] if len(self.parts) == 1 and self.parts[0][0] == 1 else \
            " + ".join(f"{w:g}·{n}" for (w, _), n in zip(self.parts, names))

    def __call__(self, req: ScoreRequest) -> torch.Tensor:
        return sum(w * scorer(req) for w, scorer in self.parts)


def nonfinite_message(scores: torch.Tensor, source: str) -> str | None:
    """A message naming the source when some scores are NaN or infinite, else None."""
    bad = ~torch.isfinite(scores)
    if not bool(bad.any()):
        return None
    return f"{int(bad.sum())} of {scores.numel()} scores from {source} are not finite"


def clip_scores(scores: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Clip scores to [−clip, clip] (off when clip is None)."""
    return scores if clip is None else scores.clamp(-clip, clip)
