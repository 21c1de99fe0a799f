"""rlhfkit.models on real tiny GPT-2 and Llama models built from code (no downloads)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer, GPT2Config, PreTrainedTokenizerFast)

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models import (PolicyWithValueHead, ValueModel, build_tiny_model, disable_dropout,
                            get_score_stats, init_reward_model, load_causal_lm, load_policy,
                            load_reward_model, load_tokenizer, pooling_of, score_sequences,
                            set_score_stats)

ATOL = 1e-5
ARCHS = ["gpt2", "llama"]


@pytest.fixture(params=ARCHS)
def model_dir(request):
    """The tiny model folder of each architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.fixture(scope="module", params=ARCHS)
def reward_dir(request, tmp_path_factory):
    """A freshly initialised reward model of each architecture, saved with its tokenizer."""
    src = request.getfixturevalue(f"tiny_{request.param}_dir")
    tokenizer = load_tokenizer(src)
    torch.manual_seed(0)
    model = init_reward_model(src, tokenizer, dtype="float32")
    out = tmp_path_factory.mktemp(f"rm_{request.param}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_batch(seqs: list[list[int]], side: str, pad_id: int = 0):
    """Pad token-id lists to one length on `side`: -> input_ids, attention_mask (B, L)."""
    length = max(len(s) for s in seqs)
    ids, mask = [], []
    for s in seqs:
        pad = [pad_id] * (length - len(s))
        ones, zeros = [1] * len(s), [0] * len(pad)
        ids.append(pad + s if side == "left" else s + pad)
        mask.append(zeros + ones if side == "left" else ones + zeros)
    return torch.tensor(ids), torch.tensor(mask)


def real_positions(mask_row: torch.Tensor) -> torch.Tensor:
    return mask_row.nonzero().squeeze(-1)


def some_sequences(n: int, vocab: int, seed: int = 0, eos_id: int = 2) -> list[list[int]]:
    """`n` random sequences of different lengths, ids past the special tokens, ending in EOS."""
    g = torch.Generator().manual_seed(seed)
    lengths = [3 + 4 * i for i in range(n)]
    return [torch.randint(3, vocab, (k,), generator=g).tolist() + [eos_id] for k in lengths]


# --- tokenizer -------------------------------------------------------------------------------

def test_tokenizer_has_distinct_pad_and_left_padding(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert None not in (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left" and tok.model_max_length == 512
    batch = tok(["The cat likes bread.", "hi"], padding=True)
    assert batch["input_ids"][1][0] == tok.pad_token_id and batch["attention_mask"][1][0] == 0
    assert tok.decode(tok("What is 3 + 4? 7.")["input_ids"]) == "What is 3 + 4? 7."


def test_chat_template_renders_turns_and_generation_prompt(tiny_tokenizer):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    text = tiny_tokenizer.apply_chat_template(chat, tokenize=False)
    assert text == "user: hi<|eos|>assistant: hello<|eos|>"
    prompt = tiny_tokenizer.apply_chat_template(chat[:1], tokenize=False,
                                                add_generation_prompt=True)
    assert prompt == "user: hi<|eos|>assistant:"


def _gpt2_style_folder(corpus, out_dir, pad_is_eos: bool):
    """A GPT-2-like folder: one special token <|endoftext|> (bos = eos), no pad or pad = eos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(corpus)], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    extra = {"pad_token": "<|endoftext|>"} if pad_is_eos else {}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>", **extra)
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=len(tokenizer))
    AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return len(tokenizer)


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_tokenizer_without_own_pad_gets_one_and_embedding_grows(tiny_corpus, tmp_path, pad_is_eos):
    old_vocab = _gpt2_style_folder(tiny_corpus, tmp_path, pad_is_eos)
    model, tokenizer = load_policy(tmp_path, dtype="float32")
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left" and len(tokenizer) == old_vocab + 1
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["a cat", "the old man sees"], padding=True, return_tensors="pt")
    assert torch.isfinite(model(**batch).logits).all()


# --- tiny models -------------------------------------------------------------------------------

def test_tiny_models_save_and_load_with_plain_transformers(model_dir):
    plain = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert (model_dir / "model.safetensors").is_file()
    assert plain.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert plain.config.eos_token_id == tokenizer.eos_token_id
    assert plain.get_input_embeddings().num_embeddings == len(tokenizer)
    ours, our_tokenizer = load_policy(model_dir, dtype="float32")
    assert len(our_tokenizer) == len(tokenizer)  # our own tokenizer needs no new pad token
    ids = torch.tensor([some_sequences(1, len(tokenizer))[0]])
    torch.testing.assert_close(ours.eval()(ids).logits, plain.eval()(ids).logits)


def test_attention_runs_in_float32_under_cpu_bf16_autocast_and_is_not_saved(model_dir,
                                                                            tmp_path):
    """Loaded models swap SDPA for `sdpa_fp32_on_cpu`: bit-equal in float32 (on a left-padded
    batch, so the attention mask must reach it), float32 attention under bf16 autocast on
    CPU; a saved model keeps plain SDPA."""
    from rlhfkit.models.trunk import FP32_ATTENTION, fuse_activations, sdpa_fp32_on_cpu
    ours, tokenizer = load_policy(model_dir, dtype="float32")
    # the same GELU kernel on both sides, so that attention is the only difference
    plain = fuse_activations(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    assert (ours.config._attn_implementation, plain.config._attn_implementation) == (
        FP32_ATTENTION, "sdpa")
    ids, mask = make_batch(some_sequences(3, len(tokenizer)), "left", tokenizer.pad_token_id)
    real = mask.bool()
    with torch.no_grad():
        logits = ours.eval()(ids, attention_mask=mask).logits
        assert torch.equal(logits[real], plain.eval()(ids, attention_mask=mask).logits[real])
    ours.save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    module = ours.base_model.layers[0].self_attn if hasattr(ours.base_model, "layers") else \
        ours.base_model.h[0].attn
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_fp32_on_cpu(module, q, k, v, None, is_causal=True)
    exact = torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), is_causal=True).transpose(1, 2)
    assert out.dtype == torch.bfloat16 and torch.equal(out, exact.to(torch.bfloat16))
    out.float().sum().backward()
    assert q.grad.dtype == torch.bfloat16 and torch.isfinite(q.grad).all()


def test_build_tiny_model_is_reproducible(tiny_corpus, tmp_path, tiny_gpt2_dir):
    again = build_tiny_model("gpt2", "tiny", tiny_corpus, tmp_path, seed=0)
    a = AutoModelForCausalLM.from_pretrained(again).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch, size, option", [("bert", "tiny", "arch"), ("gpt2", "huge", "size")])
def test_build_tiny_model_rejects_unknown_options(tiny_corpus, tmp_path, arch, size, option):
    with pytest.raises(ConfigError, match=rf"^{option}: got .* expected one of"):
        build_tiny_model(arch, size, tiny_corpus, tmp_path)


def test_unknown_dtype_is_a_config_error(tiny_gpt2_dir, tiny_tokenizer):
    with pytest.raises(ConfigError, match="dtype"):
        load_causal_lm(tiny_gpt2_dir, tiny_tokenizer, dtype="float8")


def test_folder_without_tokenizer_is_a_clear_error(tiny_gpt2_dir, tmp_path):
    AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).save_pretrained(tmp_path)
    with pytest.raises(RlhfkitError, match="no tokenizer files"):
        load_policy(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_model"
    for load in (load_tokenizer, load_policy, load_reward_model, ValueModel.from_pretrained,
                 PolicyWithValueHead.from_pretrained):
        with pytest.raises(RlhfkitError, match="no_such_model"):
            load(missing)


# --- reward model ------------------------------------------------------------------------------

def test_reward_head_init_and_pad_id(reward_dir):
    model, tokenizer = load_reward_model(reward_dir)
    head = model.score
    hidden = head.in_features
    assert head.out_features == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    # N+ init: std 1/sqrt(H+1); with H=64 weights, the sample std is within 35% of it.
    assert abs(head.weight.std().item() * (hidden + 1) ** 0.5 - 1) < 0.35
    assert head.bias is None or torch.all(head.bias == 0)


def test_reward_model_loads_in_plain_transformers_with_same_scores(reward_dir, tmp_path):
    ours, tokenizer = load_reward_model(reward_dir, dtype="float32")
    set_score_stats(ours, mean=0.25, std=2.0)
    ours.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    reloaded, _ = load_reward_model(tmp_path)
    assert get_score_stats(reloaded) == (0.25, 2.0) and get_score_stats(plain) == (0.25, 2.0)
    # Right padding: plain GPT-2 does not derive position ids from the mask, so this is the
    # layout on which its scores and ours must agree.
    ids, mask = make_batch(some_sequences(3, len(tokenizer)), side="right")
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        torch.testing.assert_close(score_sequences(ours.eval(), ids, mask), expected,
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(score_sequences(reloaded.eval(), ids, mask), expected,
                                   atol=ATOL, rtol=0)


def test_pooling_is_last_unless_saved_otherwise_and_unknown_poolings_are_refused(
        tiny_gpt2_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_gpt2_dir)
    last = init_reward_model(tiny_gpt2_dir, tokenizer)
    assert pooling_of(last) == "last" and not hasattr(last.config, "rlhfkit_pooling")
    init_reward_model(tiny_gpt2_dir, tokenizer, pooling="sum").save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert pooling_of(load_reward_model(tmp_path)[0]) == "sum"
    with pytest.raises(ConfigError, match="pooling: got 'mean', expected one of last, sum"):
        init_reward_model(tiny_gpt2_dir, tokenizer, pooling="mean")
    last.config.rlhfkit_pooling = "max"
    with pytest.raises(RlhfkitError, match="rlhfkit_pooling.*'max'"):
        pooling_of(last)


def test_score_stats_absent_by_default_and_std_must_be_positive(reward_dir):
    model, _ = load_reward_model(reward_dir)
    assert get_score_stats(model) is None
    with pytest.raises(ConfigError, match="std"):
        set_score_stats(model, mean=0.0, std=0.0)


def test_reward_model_with_two_outputs_is_refused(tiny_gpt2_dir, tmp_path):
    two = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2_dir, num_labels=2)
    two.save_pretrained(tmp_path)
    with pytest.raises(RlhfkitError, match="head with 2 outputs.*num_labels=1"):
        load_reward_model(tmp_path)


def test_causal_lm_folder_is_not_a_reward_model(tiny_gpt2_dir):
    with pytest.raises(RlhfkitError, match="GPT2LMHeadModel, not a reward model"):
        load_reward_model(tiny_gpt2_dir)


# --- padding invariance ------------------------------------------------------------------------

def _layouts(seqs, neighbours):
    """Each sequence alone, and in left-, right-padded and differently-filled batches."""
    yield "alone", [[s] for s in seqs], "right"
    yield "left", [seqs], "left"
    yield "right", [seqs], "right"
    yield "neighbours", [[s] + neighbours for s in seqs], "left"


@pytest.mark.parametrize("pooling", ["last", "sum"])
def test_scores_and_values_ignore_padding_and_neighbours(reward_dir, pooling):
    rm, tokenizer = load_reward_model(reward_dir, dtype="float32")
    rm.config.rlhfkit_pooling = pooling
    critic = ValueModel(rm)
    seqs = some_sequences(3, len(tokenizer), seed=1)
    neighbours = some_sequences(2, len(tokenizer), seed=2)[::-1] + [[5] * 30 + [2]]
    results = {}
    with torch.no_grad():
        for name, groups, side in _layouts(seqs, neighbours):
            scores, values = [], []
            for group in groups:
                ids, mask = make_batch(group, side)
                s, v = score_sequences(rm.eval(), ids, mask), critic.eval().values(ids, mask)
                assert torch.isfinite(v).all()  # padded positions too: masks never meet NaN
                n = 1 if name in ("alone", "neighbours") else len(seqs)
                scores += s[:n].tolist()
                values += [v[i, real_positions(mask[i])] for i in range(n)]
            results[name] = (torch.tensor(scores), values)
    ref_scores, ref_values = results["alone"]
    for name, (scores, values) in results.items():
        torch.testing.assert_close(scores, ref_scores, atol=ATOL, rtol=0, msg=name)
        for v, ref in zip(values, ref_values):
            torch.testing.assert_close(v, ref, atol=ATOL, rtol=0, msg=name)


# --- value functions ---------------------------------------------------------------------------

def test_value_model_from_reward_model_starts_at_the_reward(reward_dir, tmp_path):
    rm, tokenizer = load_reward_model(reward_dir, dtype="float32")
    critic = ValueModel.from_pretrained(reward_dir, dtype="float32").eval()
    ids, mask = make_batch(some_sequences(3, len(tokenizer)), side="left")
    with torch.no_grad():
        values = critic.values(ids, mask)
        assert values.shape == ids.shape and values.dtype == torch.float32
        torch.testing.assert_close(values[:, -1], score_sequences(rm.eval(), ids, mask),
                                   atol=ATOL, rtol=0)
        critic.save_pretrained(tmp_path)
        tokenizer.save_pretrained(tmp_path)
        again = ValueModel.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(again.values(ids, mask), values, atol=0, rtol=0)
    assert isinstance(AutoModelForSequenceClassification.from_pretrained(tmp_path).score,
                      torch.nn.Linear)


def test_policy_with_value_head_matches_plain_lm_and_round_trips(model_dir, tmp_path):
    lm, tokenizer = load_policy(model_dir, dtype="float32")
    policy = PolicyWithValueHead(lm).eval()
    ids, mask = make_batch(some_sequences(2, len(tokenizer)), side="right")
    with torch.no_grad():
        logits, values = policy(ids, mask)
        assert values.shape == ids.shape and values.dtype == torch.float32
        assert torch.all(values == 0)  # fresh head is zero
        real = mask.bool()  # at right padding, plain GPT-2 counts positions on; we do not
        plain_logits = lm(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(logits[real], plain_logits[real])
        torch.nn.init.normal_(policy.value_head.weight)   # a "trained" head to round-trip
        torch.nn.init.normal_(policy.value_head.bias)
        logits, values = policy(ids, mask)
    policy.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "value_head.safetensors").is_file()
    again = PolicyWithValueHead.from_pretrained(tmp_path).eval()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        logits2, values2 = again(ids, mask)
        torch.testing.assert_close(logits2, logits, atol=0, rtol=0)
        torch.testing.assert_close(values2, values, atol=0, rtol=0)
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits[real],
                                   logits[real])


def test_policy_values_and_logits_ignore_left_padding(tiny_llama_dir):
    lm, tokenizer = load_policy(tiny_llama_dir, dtype="float32")
    policy = PolicyWithValueHead(lm).eval()
    torch.nn.init.normal_(policy.value_head.weight)
    seqs = some_sequences(3, len(tokenizer), seed=3)
    with torch.no_grad():
        ids, mask = make_batch(seqs, side="left")
        logits, values = policy(ids, mask)
        for i, s in enumerate(seqs):
            alone_ids, alone_mask = make_batch([s], side="left")
            alone_logits, alone_values = policy(alone_ids, alone_mask)
            real = real_positions(mask[i])
            torch.testing.assert_close(values[i, real], alone_values[0], atol=ATOL, rtol=0)
            torch.testing.assert_close(logits[i, real], alone_logits[0], atol=ATOL, rtol=0)


def test_policy_without_value_head_file_gets_zero_head(tiny_gpt2_dir, caplog):
    with caplog.at_level("INFO", logger="rlhfkit.models.value"):
        policy = PolicyWithValueHead.from_pretrained(tiny_gpt2_dir)
    assert "value head initialised to zero" in caplog.text
    assert torch.all(policy.value_head.weight == 0) and torch.all(policy.value_head.bias == 0)


# --- dropout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_disable_dropout_makes_train_mode_deterministic(request, arch):
    folder = request.getfixturevalue(f"tiny_{arch}_dir")
    # Llama's default attention dropout is 0; raise it so the test has something to turn off.
    extra = {"attention_dropout": 0.5} if arch == "llama" else {}
    model = AutoModelForCausalLM.from_pretrained(folder, **extra).train()
    ids = torch.tensor([some_sequences(1, model.config.vocab_size)[0] * 3])
    with torch.no_grad():
        assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout is on
        disable_dropout(model)
        assert torch.equal(model(ids).logits, model(ids).logits)
    dropout_fields = {k: v for k, v in model.config.to_dict().items()
                      if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop"))}
    assert dropout_fields and all(v == 0.0 for v in dropout_fields.values())


def test_split_digits_keeps_every_digit_its_own_token(tmp_path):
    from rlhfkit.models import train_tokenizer
    corpus = tmp_path / "sums.txt"
    corpus.write_text("".join(f"{a}+{b}={a + b}\n" for a in range(60) for b in range(0, 60, 7)))
    merged = train_tokenizer(corpus, vocab_size=400)
    split = train_tokenizer(corpus, vocab_size=400, split_digits=True)
    assert split.tokenize("37+58=95") == ["3", "7", "+", "5", "8", "=", "9", "5"]
    assert len(merged.tokenize("37+58=95")) < 8  # BPE merges digits without the option
    assert split.decode(split.encode("37+58=95")) == "37+58=95"
