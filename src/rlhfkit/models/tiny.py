"""Tiny models and an offline tokenizer, built from a text file in seconds.

Tests and the built-in demo never download anything: they train a byte-level BPE
tokenizer on a small corpus and randomly initialise a GPT-2 or Llama of a few hundred
thousand parameters. The folders they write are ordinary Hugging Face folders, loadable
with plain `transformers` `from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, GPT2Config, LlamaConfig,
                          PreTrainedTokenizerFast)

from rlhfkit.errors import ConfigError

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"

# Role-tagged turns, each ended by EOS: "user: hi<|eos|>assistant: hello<|eos|>".
# The generation prompt stops right after "assistant:", so the model writes the
# leading space itself, exactly as it saw it in SFT data (N+ detail: one tokenization
# for SFT, reward model and PPO).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)

ARCHS = ("gpt2", "llama")
SIZES = {
    # hidden, layers, heads, context; small and base match the two GPT-2 sizes of the
    # TRL yardstick in ../shared/bench (about 0.5 M and 3.4 M parameters)
    "tiny": dict(hidden=64, layers=2, heads=4, context=256),
    "small": dict(hidden=128, layers=2, heads=4, context=512),
    "base": dict(hidden=256, layers=4, heads=4, context=512),
}


def train_tokenizer(corpus_path, out_dir=None, vocab_size: int = 1000,
                    model_max_length: int = 512,
                    split_digits: bool = False) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a text file and wrap it for transformers.

    Special tokens `<|pad|>`, `<|bos|>`, `<|eos|>` get ids 0, 1, 2; pad is distinct from
    EOS so masking padding never hides a learned EOS (N detail). No token is added
    automatically when encoding (like GPT-2): the chat template and the data code add EOS.
    Padding is on the left, as generation needs. Saved to `out_dir` when given.
    `split_digits` keeps every digit its own token (BPE would merge "146" into one token,
    which makes arithmetic a lookup table instead of something a small model can learn).
    """
    corpus_path = Path(corpus_path)
    if not corpus_path.is_file():
        raise ConfigError(f"corpus_path: no such file '{corpus_path}'")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  byte_level]) if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        # All 256 byte symbols, so any text encodes without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus_path)], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def _check_choice(option: str, value, allowed) -> None:
    if value not in allowed:
        choices = ", ".join(map(str, allowed))
        raise ConfigError(f"{option}: got {value!r}, expected one of {choices}")


def tiny_config(arch: str, size: str, tokenizer: PreTrainedTokenizerFast):
    """The transformers config of a tiny `arch` ("gpt2" | "llama") of `size` ("tiny" | "small").

    Dropout stays at the architecture default on purpose: RL code must switch it off
    itself (`rlhfkit.models.disable_dropout`), and a test checks that it does.
    """
    _check_choice("arch", arch, ARCHS)
    _check_choice("size", size, tuple(SIZES))
    s = SIZES[size]
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if arch == "gpt2":
        # gelu_pytorch_tanh: the same function as GPT-2's gelu_new, one fused kernel
        # instead of five elementwise ops (a third of a tiny model's step on a CPU)
        return GPT2Config(n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"],
                          n_positions=s["context"], activation_function="gelu_pytorch_tanh",
                          **ids)
    return LlamaConfig(hidden_size=s["hidden"], intermediate_size=4 * s["hidden"],
                       num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                       num_key_value_heads=s["heads"], max_position_embeddings=s["context"],
                       **ids)


def build_tiny_model(arch: str, size: str, corpus_path, out_dir, seed: int = 0,
                     vocab_size: int = 1000, split_digits: bool = False) -> Path:
    """Train a tokenizer on `corpus_path`, build a random `arch` model, save both to `out_dir`.

    The folder holds `config.json`, `model.safetensors` and the tokenizer files; plain
    `AutoModelForCausalLM.from_pretrained(out_dir)` loads it. Returns `out_dir` as a Path.
    """
    _check_choice("arch", arch, ARCHS)
    _check_choice("size", size, tuple(SIZES))
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus_path, vocab_size=vocab_size,
                                model_max_length=SIZES[size]["context"],
                                split_digits=split_digits)
    config = tiny_config(arch, size, tokenizer)
    torch.manual_seed(seed)  # same seed, same weights: tests and demo are reproducible
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
