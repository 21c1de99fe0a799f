"""Models: any Hugging Face causal LM as a policy, reward models, value functions, tiny models.

- `loading`: tokenizer with a pad token distinct from EOS, left padding; causal LMs that
  agree with it; `disable_dropout`.
- `trunk`: the transformer under a head, run with position ids from the attention mask.
- `reward`: a sequence-classification model with one output, read at the last real token.
- `value`: a separate critic (`ValueModel`) or a value head on the policy (`PolicyWithValueHead`).
- `lora`: LoRA adapters through peft (optional); the reference is the base, adapters off.
- `tiny`: an offline byte-level BPE tokenizer and random tiny GPT-2 / Llama models.
"""

from rlhfkit.models.loading import (disable_dropout, load_causal_lm, load_policy,
                                    load_tokenizer)
from rlhfkit.models.lora import (LoraConfig, adapters_disabled, add_lora, is_adapter_folder,
                                 is_lora, load_lora_adapter, save_lora_model,
                                 trainable_parameters)
from rlhfkit.models.reward import (get_score_stats, init_reward_model, last_token_index,
                                   load_reward_model, pooling_of, score_packed,
                                   score_sequences, set_score_stats)
from rlhfkit.models.tiny import build_tiny_model, train_tokenizer
from rlhfkit.models.trunk import score_head, trunk, trunk_hidden_states
from rlhfkit.models.value import PolicyWithValueHead, ValueModel

__all__ = [
    "load_tokenizer", "load_causal_lm", "load_policy", "disable_dropout",
    "init_reward_model", "load_reward_model", "score_sequences", "score_packed", "last_token_index",
    "pooling_of",
    "set_score_stats", "get_score_stats",
    "trunk", "score_head", "trunk_hidden_states",
    "PolicyWithValueHead", "ValueModel",
    "build_tiny_model", "train_tokenizer",
    "LoraConfig", "add_lora", "adapters_disabled", "save_lora_model", "load_lora_adapter",
    "is_lora", "is_adapter_folder", "trainable_parameters",
]
