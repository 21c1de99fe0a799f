"""rlhfkit: Reinforcement Learning from Human Feedback for Hugging Face causal language models.

The pipeline of InstructGPT (Ouyang et al. 2022): SFT -> reward model -> PPO, plus the
critic-free family (REINFORCE with baseline, RLOO, GRPO). The math lives in `rlhfkit.core`.
"""

__version__ = "0.1.0"
