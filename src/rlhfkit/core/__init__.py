"""The RLHF math: pure functions on tensors, importing torch only.

Each function's docstring gives its formula, its source and its shapes
(B batch, P prompt length, T response length, G group size, V vocabulary).

    masked.py      masked_mean / masked_var / masked_whiten, position ids under left padding
    logprobs.py    log π(a_t | s_t) and entropy from logits, with the sampling temperature
    kl.py          per-token KL estimators k1/k2/k3, fixed and adaptive KL coefficient
    rewards.py     per-token rewards (score at the last token, −β·KL on every token),
                   rewards-to-go, missing-EOS penalty
    advantages.py  GAE; REINFORCE, RLOO and GRPO sequence advantages
    losses.py      Bradley–Terry, REINFORCE, PPO clipped policy and value losses, reductions
"""

from rlhfkit.core.advantages import (ADVANTAGE_ESTIMATORS, SEQUENCE_ADVANTAGES, gae, grpo_advantages,
                                     reinforce_advantages, rloo_advantages)
from rlhfkit.core.kl import (KL_ESTIMATORS, AdaptiveKLController, FixedKLController,
                             kl_estimate)
from rlhfkit.core.logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
from rlhfkit.core.losses import (REDUCTIONS, explained_variance, policy_gradient_loss,
                                 ppo_policy_loss, ppo_value_loss, reduce_loss,
                                 reward_model_loss)
from rlhfkit.core.masked import (masked_mean, masked_sum, masked_var, masked_whiten,
                                 position_ids_from_mask)
from rlhfkit.core.rewards import (apply_missing_eos_penalty, discounted_returns,
                                  last_token_index, per_token_rewards)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "SEQUENCE_ADVANTAGES", "gae", "grpo_advantages", "reinforce_advantages", "rloo_advantages",
    "KL_ESTIMATORS", "AdaptiveKLController", "FixedKLController", "kl_estimate",
    "entropy_from_logits", "logprobs_and_entropy", "logprobs_from_logits",
    "REDUCTIONS", "explained_variance", "policy_gradient_loss", "ppo_policy_loss",
    "ppo_value_loss", "reduce_loss", "reward_model_loss",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten", "position_ids_from_mask",
    "apply_missing_eos_penalty", "discounted_returns", "last_token_index", "per_token_rewards",
]
