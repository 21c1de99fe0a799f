"""rlhfkit.models.lora on real tiny GPT-2 and Llama models built from code (no downloads)."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.config import load_config
from rlhfkit.core import (logprobs_from_logits, masked_mean, masked_whiten,
                          position_ids_from_mask, ppo_policy_loss)
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.generation import Sampling, sample_responses
from rlhfkit.models import (PolicyWithValueHead, ValueModel, disable_dropout, init_reward_model,
                            load_tokenizer, score_sequences)
from rlhfkit.models.lora import (LoraConfig, adapters_disabled, add_lora, is_adapter_folder,
                                 is_lora, load_lora_adapter, save_lora_model,
                                 trainable_parameters)

pytest.importorskip("peft")

ATOL = 1e-5
ARCHS = ["gpt2", "llama"]
LORA = LoraConfig(r=4, alpha=8.0)


@pytest.fixture(params=ARCHS)
def model_dir(request):
    """The tiny model folder of each architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


def load_lm(folder):
    """A float32 causal LM in eval mode with dropout off, as RL uses it."""
    return disable_dropout(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)).eval()


def lora_lm(folder, cfg: LoraConfig = LORA, seed: int = 0):
    torch.manual_seed(seed)
    return add_lora(load_lm(folder), cfg, "causal_lm")


def batch(seqs: list[list[int]], pad_id: int = 0):
    """Left-pad token-id lists: -> input_ids, attention_mask (B, L)."""
    length = max(len(s) for s in seqs)
    ids = [[pad_id] * (length - len(s)) + s for s in seqs]
    mask = [[0] * (length - len(s)) + [1] * len(s) for s in seqs]
    return torch.tensor(ids), torch.tensor(mask)


def some_batch(vocab: int, seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    return batch([torch.randint(3, vocab, (4 + 3 * i,), generator=g).tolist() for i in range(n)])


def forward_logits(model, ids, mask):
    """Logits with position ids from the mask (padding-proof): (B, L) -> (B, L, V)."""
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                 use_cache=False).logits


def seq_logprobs(model, ids, mask):
    """log π of each next token under `model`, temperature 1: (B, L) -> (B, L - 1)."""
    return logprobs_from_logits(forward_logits(model, ids, mask)[:, :-1], ids[:, 1:], 1.0)


def train_steps(model, ids, mask, steps: int = 2, lr: float = 1e-2) -> None:
    """A few Adam steps on the trainable parameters (raise the data's likelihood)."""
    opt = torch.optim.Adam(trainable_parameters(model), lr=lr)
    for _ in range(steps):
        loss = -masked_mean(seq_logprobs(model, ids, mask), mask[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()


# --- adapters -----------------------------------------------------------------------------------

def test_only_adapters_are_trainable_and_the_start_is_the_base(model_dir):
    base = load_lm(model_dir)
    model = lora_lm(model_dir)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    # every linear layer of every block has an adapter, the output head (tied for GPT-2) none
    layers = {n.split(".lora_")[0] for n in names}
    assert len(layers) == (4 if "gpt2" in str(model_dir) else 7) * base.config.num_hidden_layers
    assert not any("lm_head" in n or "wte" in n or "embed" in n for n in names)
    assert len(trainable_parameters(model)) == len(names)
    assert not any(m.training for m in model.modules())  # eval stays eval (sampling needs it)
    ids, mask = some_batch(base.config.vocab_size)
    with torch.no_grad():  # B = 0 at the start: exactly the base model
        assert torch.equal(forward_logits(model, ids, mask), forward_logits(base, ids, mask))


def test_same_seed_gives_the_same_adapters(tiny_llama_dir):
    a, b, c = lora_lm(tiny_llama_dir), lora_lm(tiny_llama_dir), lora_lm(tiny_llama_dir, seed=1)
    sa, sb, sc = (dict(m.named_parameters()) for m in (a, b, c))
    lora_a = [n for n in sa if ".lora_A." in n]
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert not all(torch.equal(sa[n], sc[n]) for n in lora_a)


def test_reference_with_adapters_disabled_equals_the_untouched_base(model_dir):
    base = load_lm(model_dir)
    model = lora_lm(model_dir)
    ids, mask = some_batch(base.config.vocab_size, seed=1)
    train_steps(model, ids, mask)
    with torch.no_grad():
        base_logprobs = seq_logprobs(base, ids, mask)
        adapted = seq_logprobs(model, ids, mask)
        with adapters_disabled(model):
            ref_logprobs = seq_logprobs(model, ids, mask)
        again = seq_logprobs(model, ids, mask)
    real = mask[:, 1:].bool()
    assert not torch.allclose(adapted[real], base_logprobs[real], atol=1e-3)  # it trained
    torch.testing.assert_close(ref_logprobs, base_logprobs, atol=0, rtol=0)
    torch.testing.assert_close(again, adapted, atol=0, rtol=0)  # adapters back on
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_adapters_come_back_after_an_exception(tiny_gpt2_dir):
    model = lora_lm(tiny_gpt2_dir)
    with pytest.raises(KeyError):
        with adapters_disabled(model):
            raise KeyError("boom")
    lora_layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert lora_layers and not any(m.disable_adapters for m in lora_layers)


def test_policy_with_value_head_around_a_lora_lm(model_dir):
    base = load_lm(model_dir)
    policy = PolicyWithValueHead(lora_lm(model_dir)).eval()
    torch.nn.init.normal_(policy.value_head.weight)
    assert is_lora(policy)
    trainable = {id(p) for p in trainable_parameters(policy)}
    assert {id(p) for p in policy.value_head.parameters()} <= trainable  # the head trains in full
    ids, mask = some_batch(base.config.vocab_size, seed=2)
    opt = torch.optim.Adam(trainable_parameters(policy), lr=1e-2)
    logits, values = policy(ids, mask)
    (-logprobs_from_logits(logits[:, :-1], ids[:, 1:], 1.0).mean() + values.pow(2).mean()).backward()
    opt.step()
    with torch.no_grad():
        logits, values = policy(ids, mask)
        with adapters_disabled(policy):
            ref_logits, ref_values = policy(ids, mask)
        base_logits = forward_logits(base, ids, mask)
    torch.testing.assert_close(ref_logits, base_logits, atol=0, rtol=0)
    assert not torch.allclose(logits, base_logits, atol=1e-4)
    assert not torch.equal(values, ref_values)  # the trunk under the value head is adapted too


def test_adapters_disabled_needs_adapters(tiny_gpt2_dir):
    with pytest.raises(RlhfkitError, match="no LoRA adapters"):
        with adapters_disabled(load_lm(tiny_gpt2_dir)):
            pass
    assert not is_lora(load_lm(tiny_gpt2_dir))


@pytest.mark.parametrize("arch", ARCHS)
def test_disable_dropout_turns_lora_dropout_off(request, arch):
    model = lora_lm(request.getfixturevalue(f"tiny_{arch}_dir"),
                    LoraConfig(r=4, dropout=0.5)).train()
    ids, mask = some_batch(model.config.vocab_size)
    train_steps(model, ids, mask, steps=1)  # B != 0, so LoRA dropout shows in the output
    with torch.no_grad():
        assert not torch.equal(forward_logits(model, ids, mask), forward_logits(model, ids, mask))
        disable_dropout(model)
        assert torch.equal(forward_logits(model, ids, mask), forward_logits(model, ids, mask))


# --- padding ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_lora_llama(tiny_llama_dir):
    model = lora_lm(tiny_llama_dir)
    train_steps(model, *some_batch(model.config.vocab_size, seed=5), steps=3)
    return model


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(2, 9), min_size=2, max_size=4), seed=st.integers(0, 99))
def test_padding_never_changes_the_adapted_logprobs(trained_lora_llama, lengths, seed):
    model = trained_lora_llama
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    ids, mask = batch(seqs)
    with torch.no_grad():
        together = seq_logprobs(model, ids, mask)
        for i, s in enumerate(seqs):
            alone = seq_logprobs(model, *batch([s]))[0]
            torch.testing.assert_close(together[i, -(len(s) - 1):], alone, atol=ATOL, rtol=0)


# --- saving -------------------------------------------------------------------------------------

def test_merged_save_is_a_plain_transformers_model(model_dir, tmp_path):
    model = lora_lm(model_dir)
    ids, mask = some_batch(model.config.vocab_size, seed=3)
    train_steps(model, ids, mask)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    save_lora_model(model, tmp_path, "merged")
    assert (tmp_path / "model.safetensors").is_file() and not is_adapter_folder(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any("lora" in n or "base_layer" in n for n in plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(plain, ids, mask),
                                   forward_logits(model, ids, mask), atol=ATOL, rtol=0)
    # the training model is untouched: still LoRA, same weights, still trainable
    assert is_lora(model) and all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert trainable_parameters(model)


def test_adapter_save_and_load_round_trip(model_dir, tmp_path):
    model = lora_lm(model_dir)
    ids, mask = some_batch(model.config.vocab_size, seed=4)
    train_steps(model, ids, mask)
    save_lora_model(model, tmp_path, "adapter")
    assert is_adapter_folder(tmp_path) and (tmp_path / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    resumed = load_lora_adapter(load_lm(model_dir), tmp_path).eval()
    frozen = load_lora_adapter(load_lm(model_dir), tmp_path, trainable=False)
    assert len(trainable_parameters(resumed)) == len(trainable_parameters(model))
    assert not trainable_parameters(frozen)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(resumed, ids, mask),
                                   forward_logits(model, ids, mask), atol=0, rtol=0)
    with pytest.raises(RlhfkitError, match="no LoRA adapter"):
        load_lora_adapter(load_lm(model_dir), model_dir)


def test_policy_with_value_head_saves_merged_and_as_adapter(tiny_gpt2_dir, tmp_path):
    policy = PolicyWithValueHead(lora_lm(tiny_gpt2_dir)).eval()
    torch.nn.init.normal_(policy.value_head.weight)
    ids, mask = some_batch(policy.config.vocab_size)
    train_steps(policy.lm, ids, mask)
    save_lora_model(policy, tmp_path / "merged", "merged")
    save_lora_model(policy, tmp_path / "adapter", "adapter")
    assert (tmp_path / "adapter" / "value_head.safetensors").is_file()
    again = PolicyWithValueHead.from_pretrained(tmp_path / "merged", load_tokenizer(tiny_gpt2_dir))
    with torch.no_grad():
        for got, want in zip(again.eval()(ids, mask), policy(ids, mask)):
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_merged_model_generates_the_same_tokens(tiny_llama_dir, tmp_path):
    """Sampling goes through the peft wrapper (KV cache included) exactly as through the
    merged plain model."""
    model = lora_lm(tiny_llama_dir)
    ids, mask = some_batch(model.config.vocab_size, seed=6)
    train_steps(model, ids, mask, steps=3, lr=3e-2)
    save_lora_model(model, tmp_path, "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    sampling = Sampling(max_new_tokens=6, temperature=0.0)
    got = sample_responses(model.eval(), ids, mask, sampling, eos_token_id=2, pad_token_id=0)
    want = sample_responses(plain, ids, mask, sampling, eos_token_id=2, pad_token_id=0)
    assert torch.equal(got[0], want[0])


# --- reward model and critic --------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_seq_cls_lora_trains_the_score_head_and_saves(request, arch, tmp_path):
    folder = request.getfixturevalue(f"tiny_{arch}_dir")
    tokenizer = load_tokenizer(folder)
    torch.manual_seed(0)
    base = disable_dropout(init_reward_model(folder, tokenizer, dtype="float32")).eval()
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(0)
    rm = add_lora(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"),
                  LORA, "seq_cls").eval()
    names = [n for n, p in rm.named_parameters() if p.requires_grad]
    assert any("score" in n and "modules_to_save" in n for n in names)
    assert all("lora_" in n or "modules_to_save" in n for n in names)
    ids, mask = some_batch(len(tokenizer), seed=7)
    opt = torch.optim.Adam(trainable_parameters(rm), lr=1e-2)
    for _ in range(2):  # push all scores up
        opt.zero_grad()
        (-score_sequences(rm, ids, mask).mean()).backward()
        opt.step()
    with torch.no_grad():
        scores, base_scores = score_sequences(rm, ids, mask), score_sequences(base, ids, mask)
        with adapters_disabled(rm):
            torch.testing.assert_close(score_sequences(rm, ids, mask), base_scores, atol=0, rtol=0)
        assert bool((scores > base_scores).all())
        # a LoRA critic: the same model read at every token
        torch.testing.assert_close(ValueModel(rm).values(ids, mask)[:, -1], scores)
    save_lora_model(rm, tmp_path / "merged", "merged")
    save_lora_model(rm, tmp_path / "adapter", "adapter")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    reloaded = load_lora_adapter(
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(score_sequences(plain, ids, mask), scores, atol=ATOL, rtol=0)
        torch.testing.assert_close(score_sequences(reloaded.eval(), ids, mask), scores,
                                   atol=0, rtol=0)


# --- LoRA PPO: the reward goes up, the reference stays the base ---------------------------------

def test_lora_ppo_raises_the_reward(tiny_gpt2_dir):
    """PPO on LoRA adapters raises a toy per-token reward, with the KL penalty taken against
    the adapters-off reference. Reward: 1 for a token whose embedding points along a fixed
    random direction u (about half the vocabulary; the frozen tied head of a random tiny
    model caps how far any policy can move, so the reward is one it can reach). Measured
    exactly, not sampled: P(rewarded first response token), averaged over the prompts."""
    torch.manual_seed(0)
    model = lora_lm(tiny_gpt2_dir, LoraConfig(r=8, alpha=16.0))
    embeddings = model.get_input_embeddings().weight.detach()                     # (V, H)
    u = torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(0))
    rewarded = embeddings @ u > 0                                                 # (V,)
    prompt_ids, prompt_mask = some_batch(model.config.vocab_size, seed=8, n=16)

    def expected_reward() -> float:
        with torch.no_grad():
            probs = torch.softmax(forward_logits(model, prompt_ids, prompt_mask)[:, -1], -1)
        return probs[:, rewarded].sum(-1).mean().item()

    sampling, gen = Sampling(max_new_tokens=6, temperature=1.0), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(trainable_parameters(model), lr=3e-2)
    start = expected_reward()
    for _ in range(8):
        with torch.no_grad():
            # 1. rollout
            response, response_mask, _ = sample_responses(model, prompt_ids, prompt_mask,
                                                          sampling, 2, 0, generator=gen)
            T = response.shape[1]
            ids = torch.cat([prompt_ids, response], 1)
            mask = torch.cat([prompt_mask, response_mask], 1)
            # 2. old and reference log-probs: the same weights, adapters on and off
            old_logprobs = seq_logprobs(model, ids, mask)[:, -T:]                 # (B, T)
            with adapters_disabled(model):
                ref_logprobs = seq_logprobs(model, ids, mask)[:, -T:]
            # 3. per-token rewards with the k1 KL penalty; advantages (gamma = 0, whitened)
            rewards = rewarded[response].float() - 0.05 * (old_logprobs - ref_logprobs)
            advantages = masked_whiten(rewards, response_mask)
        for _ in range(2):  # 4. PPO epochs on the adapters only
            logprobs = seq_logprobs(model, ids, mask)[:, -T:]
            loss, _ = ppo_policy_loss(logprobs, old_logprobs, advantages, response_mask, 0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert expected_reward() > start + 0.03, (start, expected_reward())


# --- config and errors --------------------------------------------------------------------------

def test_lora_config_section():
    assert not LoraConfig().enabled and LoraConfig(r=8).enabled
    cfg = load_config(LoraConfig, None, ["r=8", "target_modules=[q_proj, v_proj]", "save=adapter"])
    assert cfg.r == 8 and cfg.target_modules == ["q_proj", "v_proj"] and cfg.save == "adapter"
    with pytest.raises(ConfigError, match="save"):
        load_config(LoraConfig, None, ["save=both"])
    with pytest.raises(ConfigError, match="r"):
        load_config(LoraConfig, None, ["r=-1"])


def test_add_lora_errors(tiny_gpt2_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="lora.r"):
        add_lora(load_lm(tiny_gpt2_dir), LoraConfig(r=0), "causal_lm")
    with pytest.raises(ConfigError, match="task"):
        add_lora(load_lm(tiny_gpt2_dir), LORA, "seq2seq")
    with pytest.raises(ConfigError, match="target_modules"):
        add_lora(load_lm(tiny_gpt2_dir), LoraConfig(r=4, target_modules=["q_proj"]), "causal_lm")
    with pytest.raises(RlhfkitError, match="already has LoRA"):
        add_lora(lora_lm(tiny_gpt2_dir), LORA, "causal_lm")
    with pytest.raises(RlhfkitError, match="not a reward model"):
        add_lora(load_lm(tiny_gpt2_dir), LORA, "seq_cls")
    with pytest.raises(ConfigError, match="lora.save"):
        save_lora_model(lora_lm(tiny_gpt2_dir), tmp_path, "both")
    with pytest.raises(RlhfkitError, match="no LoRA adapters"):
        save_lora_model(load_lm(tiny_gpt2_dir), tmp_path, "merged")
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(RlhfkitError, match=r"LoRA needs peft: pip install 'rlhfkit\[lora\]'"):
        add_lora(load_lm(tiny_gpt2_dir), LORA, "causal_lm")
    assert not is_lora(load_lm(tiny_gpt2_dir))
