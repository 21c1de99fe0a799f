"""What every logged training signal means, grouped the way the report plots them.

Each `Signal` carries one line in the lecture's spirit: what the number is, and what a
healthy curve looks like. The report prints these lines under each figure, so a reader can
tell a working run from a broken one without opening the code. Keys a run logs that are not
listed here (a demo's "gold/mean", an SFT run's "loss") still get plotted, in "other".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Signal:
    key: str
    meaning: str


@dataclass(frozen=True)
class Group:
    """One figure of the report: a name (the PNG's file stem), a title and its signals."""
    name: str
    title: str
    intro: str
    signals: tuple[Signal, ...]
    prefixes: tuple[str, ...] = ()     # unlisted keys with these prefixes join this group too

    def keys(self) -> list[str]:
        return [s.key for s in self.signals]


GROUPS: tuple[Group, ...] = (
    Group("rewards", "Rewards", "What the policy is being paid: the reward model's score per "
          "response, and the per-token reward that PPO actually optimises.", (
        Signal("score/mean", "mean score of the sampled responses (after the missing-EOS penalty "
               "and clipping), with ±1 std shaded. Healthy: rises, then flattens."),
        Signal("score/raw_mean", "mean score straight from the reward source. A gap to score/mean "
               "means responses are being penalised for never emitting EOS."),
        Signal("score/std", "spread of scores within the batch. Collapsing to ~0 early means every "
               "response looks the same to the reward model (mode collapse or saturation)."),
        Signal("reward/total", "Σ_t of the per-token reward: score − β·KL. This is what PPO "
               "maximises; it should rise with the score."),
        Signal("reward/non_score", "Σ_t −β·KL: the price paid for drifting from the reference. "
               "Healthy: small and slowly growing more negative."),
    ), prefixes=("gold/",)),
    Group("kl", "KL to the reference", "How far the policy has moved from the frozen reference "
          "model: the leash against reward hacking.", (
        Signal("kl/mean", "Σ_t KL estimate per response (nats). Healthy: grows smoothly and levels "
               "off; a steep climb while the score keeps rising is the signature of reward hacking."),
        Signal("kl/coef", "β, the weight of the KL penalty. Flat for a fixed controller; an adaptive "
               "controller raises it when KL overshoots its target."),
        Signal("loss/kl", "KL term added to the loss (GRPO-style kl_in_loss). Should stay small."),
    )),
    Group("policy", "Policy (the clipped PPO objective)", "How hard each update pushes the "
          "policy, and whether the reuse of old rollouts stays on-policy enough.", (
        Signal("loss/policy", "clipped surrogate loss −min(ρA, clip(ρ)A). Noisy around 0 with "
               "whitened advantages; its trend matters less than the signals below."),
        Signal("policy/entropy", "mean per-token entropy of the policy. Healthy: slow decline; a "
               "crash to ~0 means the policy became deterministic (collapse)."),
        Signal("clip_frac", "fraction of tokens whose ratio π/π_old left [1−ε, 1+ε]. Healthy: "
               "0.05–0.2; near 1 means updates are too large (lower lr or epochs)."),
        Signal("approx_kl", "KL(π_old ‖ π) within one update. Healthy: ≪ 0.1; larger means the "
               "rollout is being over-used."),
        Signal("ratio_mean", "mean importance ratio π/π_old. Should stay within a few percent of 1."),
        Signal("ratio_var", "variance of the ratio. Spikes flag unstable updates."),
        Signal("advantages/mean", "mean advantage; ~0 when advantages are whitened."),
    )),
    Group("value", "Value function (the critic)", "How well V(s_t) predicts the return: the "
          "baseline that makes advantages low-variance. Critic-free runs have none.", (
        Signal("loss/value", "clipped squared error of V against the GAE returns. Healthy: falls "
               "early, then tracks the moving returns."),
        Signal("value/explained_variance", "1 − Var(returns − V)/Var(returns). 1 is perfect, 0 is "
               "no better than a constant, < 0 is worse. Healthy: climbs towards 0.5–1."),
        Signal("value_clip_frac", "fraction of values the value clip bound. High means the critic "
               "wants to move further than the clip allows."),
        Signal("value_error", "mean squared error of the values before the update."),
        Signal("returns/mean", "mean return (reward-to-go) the critic is fitted to."),
    )),
    Group("responses", "Responses", "The shape of what the policy writes.", (
        Signal("response/length", "mean response length in tokens. A drift to the maximum or to "
               "very short answers is a common way of gaming a reward model."),
        Signal("response/no_eos_frac", "fraction of responses cut at max_new_tokens without EOS "
               "(penalised). Healthy: low and falling."),
    )),
    Group("optimisation", "Optimisation", "The optimizer's view of each update.", (
        Signal("grad_norm", "gradient norm before clipping. Spikes precede instabilities."),
        Signal("lr", "learning rate from the schedule."),
    )),
    Group("speed", "Speed", "Where the wall time of an update goes. Generation usually "
          "dominates RLHF: it is sequential, token by token.", (
        Signal("time/generate", "seconds sampling responses (stacked)."),
        Signal("time/score", "seconds scoring them with the reward source (stacked)."),
        Signal("time/forward", "seconds computing old/reference log-probs and values (stacked)."),
        Signal("time/train", "seconds in the PPO epochs (stacked)."),
        Signal("time/update", "seconds of the whole update (line over the stack)."),
        Signal("tokens_per_s", "response tokens per second of update time."),
    )),
)

OTHER = Group("other", "Other signals", "Signals this report has no description for, "
              "plotted as logged.", ())

# Never plotted: the x axis and the wall clock.
NOT_SIGNALS = ("step", "time")

# Rows of the summary table, in order (absent keys are skipped).
SUMMARY_KEYS = ("score/mean", "score/raw_mean", "gold/mean", "reward/total", "kl/mean",
                "kl/coef", "response/length", "response/no_eos_frac", "policy/entropy",
                "clip_frac", "approx_kl", "value/explained_variance", "tokens_per_s")

STACKED_TIMES = ("time/generate", "time/score", "time/forward", "time/train")


def group_of(key: str) -> Group:
    """The group a metric key is plotted in ("other" for keys this module does not know)."""
    for group in GROUPS:
        if key in group.keys() or (group.prefixes and key.startswith(group.prefixes)):
            return group
    return OTHER


def describe(key: str) -> str:
    """The one-line meaning of a key; gold keys and unknown keys get a generic line."""
    for group in GROUPS:
        for signal in group.signals:
            if signal.key == key:
                return signal.meaning
    if key.startswith("gold/"):
        return ("score from a held-out 'gold' judge the policy never trains on. Healthy: rises "
                "with the proxy score; falling while the proxy rises is over-optimisation.")
    return "logged by the run; no description."


def group_by_key(keys) -> dict[str, list[str]]:
    """{group name: [keys in catalogue order, then unknown keys in first-seen order]}."""
    out: dict[str, list[str]] = {}
    for group in (*GROUPS, OTHER):
        known = [k for k in group.keys() if k in keys]
        extra = [k for k in keys if k not in known and group_of(k) is group]
        if known or extra:
            out[group.name] = known + extra
    return out


def group_named(name: str) -> Group:
    return next((g for g in GROUPS if g.name == name), OTHER)
