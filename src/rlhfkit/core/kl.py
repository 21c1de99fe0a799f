"""The KL penalty against reward hacking: per-token estimators and the coefficient β.

RLHF keeps the policy π near a frozen reference π_ref (the SFT model) by penalising
KL(π ‖ π_ref) = E_{a~π}[log π(a) − log π_ref(a)]. Per token we only have the sampled
action, so the KL is estimated from the two log-probabilities of that token
(Schulman 2020, "Approximating KL divergence"). With log r = log π_ref(a) − log π(a):

    k1 = −log r = log π − log π_ref        unbiased, can be negative per token
    k2 = ½ (log r)²                         biased, always >= 0
    k3 = (r − 1) − log r                    unbiased, always >= 0, low variance
"""

from __future__ import annotations

from typing import Callable

import torch

from rlhfkit.core._checks import check_same_shape


def _k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def _k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


def _k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r  # expm1 keeps (r − 1) accurate when r ≈ 1


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": _k1, "k2": _k2, "k3": _k3,
}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(π ‖ π_ref) estimate from the log-probs of the sampled tokens.

    kind: "k1" (log π − log π_ref), "k2" (½ (log π − log π_ref)²) or "k3"
    ((r − 1) − log r with r = π_ref / π). Shapes: logprobs, ref_logprobs (B, T) -> (B, T).
    Masking is the caller's job (every token position gets a value).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"kind: expected one of {', '.join(KL_ESTIMATORS)}, got {kind!r}")
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs)


class FixedKLController:
    """A constant KL coefficient β (the N+ recipe: β = 0.05)."""

    def __init__(self, kl_coef: float):
        if kl_coef < 0:
            raise ValueError(f"kl_coef: expected a number >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """A fixed coefficient ignores the observed KL."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional control of β toward a target KL (Ziegler et al. 2019, "Fine-Tuning
    Language Models from Human Preferences", §2.2).

        e  = clip(KL / target − 1, −0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    `current_kl` is the mean over sequences of the summed per-token KL; `n_steps` is the
    number of sequences (episodes) in the batch that produced it.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if init_kl_coef <= 0:
            raise ValueError(f"init_kl_coef: expected a number > 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target: expected a KL > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon: expected a number > 0, got {horizon}")
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
