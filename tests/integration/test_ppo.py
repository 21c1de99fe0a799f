"""The RL stage on real tiny transformers models: learning, the ratio-1 check, KL control,
frozen models, bit-exact resume, mixed tokenizers, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import load_config
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.metrics import read_metrics
from rlhfkit.models import build_tiny_model, init_reward_model, load_tokenizer, score_sequences
from rlhfkit.recipes.ppo import (build, collect_rollout, compute_advantages, micro_batch_loss,
                                 train)
from rlhfkit.recipes.ppo_config import PPOConfig
from rlhfkit.rollout import select

REWARD_CODE = '''
import os
CALLS = 0

def spaces(prompts, responses):
    """10 x the share of spaces in a response: rewards more, shorter words."""
    global CALLS
    CALLS += 1
    if os.environ.get("RLHFKIT_TEST_CRASH_AT") == str(CALLS):
        raise RuntimeError("killed for the test")
    return [10 * r.count(" ") / max(len(r), 1) for r in responses]

def nan_scores(prompts, responses):
    return [float("nan")] * len(responses)

def wrong_length(prompts, responses):
    return [0.0]

def raises(prompts, responses):
    raise ZeroDivisionError("oops")
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_corpus):
    folder = tmp_path_factory.mktemp("ppo_files")
    (folder / "reward.py").write_text(REWARD_CODE)
    lines = Path(tiny_corpus).read_text().splitlines()
    with open(folder / "prompts.jsonl", "w") as f:
        for line in lines[:64]:
            f.write(json.dumps({"prompt": " ".join(line.split()[:3])}) + "\n")
    return folder


def config(files, out, *overrides, policy):
    """A small, fast PPO config on the tiny GPT-2."""
    base = [f"policy={policy}", f"prompts={files / 'prompts.jsonl'}", f"out={out}",
            f"reward.functions=[{files / 'reward.py'}:spaces]", "value.kind=head",
            "optim.lr=3e-3", "optim.schedule=constant", "batch.num_updates=20",
            "batch.prompts_per_update=64", "batch.micro_batch_size=32",
            "sampling.max_new_tokens=12", "reward.missing_eos_penalty=null", "device=cpu",
            "log.sample_every=1000", "log.save_every=1000"]
    return load_config(PPOConfig, None, base + list(overrides))


def mean_score(rows, sl):
    chosen = rows[sl]
    return sum(r["score/mean"] for r in chosen) / len(chosen)


@pytest.mark.parametrize("algo", ["ppo", "reinforce", "rloo", "grpo"])
def test_every_algorithm_raises_the_reward(algo, files, tmp_path, tiny_gpt2_dir):
    group = ["batch.samples_per_prompt=4", "batch.prompts_per_update=16"] if algo in ("rloo", "grpo") else []
    train(config(files, tmp_path / algo, f"algo={algo}", *group, policy=tiny_gpt2_dir))
    rows = read_metrics(tmp_path / algo)
    assert len(rows) == 20
    start, end = mean_score(rows, slice(0, 3)), mean_score(rows, slice(-3, None))
    # the untrained policy scores about 1.6 with a spread of about 0.1 between updates
    assert end > start + 0.6, (start, end)


@pytest.mark.parametrize("value_kind", ["head", "critic"])
def test_importance_ratio_is_exactly_one_before_the_first_update(value_kind, files, tmp_path,
                                                                  tiny_gpt2_dir):
    """Catches temperature, dropout and padding bugs: π_θ = π_old before any step."""
    cfg = config(files, tmp_path, f"value.kind={value_kind}", f"value.model={tiny_gpt2_dir}",
                 "batch.prompts_per_update=16", "batch.micro_batch_size=4",
                 "batch.forward_batch_size=16", "sampling.temperature=0.7", policy=tiny_gpt2_dir)
    p = build(cfg, torch.device("cpu"), None)
    assert p.lm.config.attn_pdrop == 0 and not p.lm.training
    rollout = collect_rollout(p)
    compute_advantages(rollout, cfg, p.kl_ctl.value)
    rows = torch.arange(8)
    _, stats = micro_batch_loss(p, select(rollout, rows), rollout.response_mask[rows].sum(), 0.05)
    assert abs(float(stats["ratio_mean"]) - 1.0) < 1e-6
    assert float(stats["approx_kl"]) < 1e-12
    # the same check fails when dropout is back on: the test can catch the bug
    for m in p.lm.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    p.lm.train()
    _, stats = micro_batch_loss(p, select(rollout, rows), rollout.response_mask[rows].sum(), 0.05)
    assert abs(float(stats["ratio_mean"]) - 1.0) > 1e-4


def test_adaptive_kl_raises_beta_when_kl_is_above_target(files, tmp_path, tiny_gpt2_dir):
    cfg = config(files, tmp_path, "kl.adaptive=true", "kl.target=0.5", "kl.horizon=100",
                 "batch.num_updates=6", "batch.prompts_per_update=32", policy=tiny_gpt2_dir)
    train(cfg)
    rows = read_metrics(tmp_path)
    coefs = [r["kl/coef"] for r in rows]
    for before, after, row in zip(coefs, coefs[1:], rows):
        # the coefficient used at update k+1 follows the KL measured at update k
        assert (after > before) == (row["kl/mean"] > 0.5)
    assert rows[-1]["kl/mean"] > 0.5 and coefs[-1] > coefs[0]


def test_a_large_kl_coefficient_keeps_the_policy_near_the_reference(files, tmp_path, tiny_gpt2_dir):
    kls = {}
    for name, extra in {"free": ["kl.coef=0"], "in reward": ["kl.coef=5"],
                        "as loss": ["kl.coef=5", "kl.placement=loss"]}.items():
        out = tmp_path / name.replace(" ", "_")
        train(config(files, out, *extra, "batch.num_updates=10", "batch.prompts_per_update=32",
                     policy=tiny_gpt2_dir))
        kls[name] = sum(r["kl/mean"] for r in read_metrics(out)[-3:]) / 3
    # without a penalty the policy drifts to a KL of about 4.5 nats in 10 updates
    assert kls["in reward"] < 0.5 * kls["free"], kls
    assert kls["as loss"] < 0.3 * kls["free"], kls


def test_frozen_models_never_change_and_every_policy_tensor_does(files, tmp_path, tiny_gpt2_dir):
    tok = load_tokenizer(tiny_gpt2_dir)
    torch.manual_seed(0)
    rm_dir = tmp_path / "rm"
    rm = init_reward_model(tiny_gpt2_dir, tok)
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    cfg = config(files, tmp_path / "run", f"reward.model={rm_dir}", "reward.functions=[]",
                 "value.kind=critic", "batch.num_updates=2", "batch.prompts_per_update=16",
                 "batch.micro_batch_size=8", policy=tiny_gpt2_dir)
    p = train(cfg)
    start = load_file(str(Path(tiny_gpt2_dir) / "model.safetensors"))
    ref_now = p.ref.state_dict()
    for name, value in start.items():  # (tied weights are saved once)
        assert torch.equal(ref_now[name], value), f"reference weight {name} changed"
    rm_start = load_file(str(rm_dir / "model.safetensors"))
    scorer_model = p.scorer.parts[0][1].model
    rm_now = scorer_model.state_dict()
    for name, value in rm_start.items():
        assert torch.equal(rm_now[name], value), f"reward-model weight {name} changed"
    policy_end = load_file(str(tmp_path / "run" / "policy" / "model.safetensors"))
    for name, value in policy_end.items():
        if name.endswith("wpe.weight"):  # positions past the longest sequence get no gradient
            value, start[name] = value[:40], start[name][:40]
        assert not torch.equal(value, start[name]), f"policy weight {name} did not change"
    critic_end = p.critic.model.state_dict()
    assert not torch.equal(critic_end["score.weight"], rm_start["score.weight"])


def test_resume_after_a_crash_equals_a_run_that_never_stopped(files, tmp_path, tiny_gpt2_dir,
                                                                monkeypatch):
    common = ["batch.num_updates=5", "log.save_every=2", "batch.prompts_per_update=16",
              "batch.micro_batch_size=8", "value.kind=critic", f"value.model={tiny_gpt2_dir}",
              "optim.schedule=linear"]
    whole = train(config(files, tmp_path / "whole", *common, policy=tiny_gpt2_dir))
    monkeypatch.setenv("RLHFKIT_TEST_CRASH_AT", "4")  # dies inside update 4
    with pytest.raises(RlhfkitError, match="killed for the test"):
        train(config(files, tmp_path / "cut", *common, policy=tiny_gpt2_dir))
    monkeypatch.delenv("RLHFKIT_TEST_CRASH_AT")
    resumed = train(config(files, tmp_path / "cut", *common, "resume=true", policy=tiny_gpt2_dir))
    for (name, a), b in zip(whole.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(whole.critic.state_dict().values(), resumed.critic.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("time", "tokens_per_s"))}
                          for r in rows]
    assert strip(read_metrics(tmp_path / "whole")) == strip(read_metrics(tmp_path / "cut"))


def test_gpt2_policy_trains_with_a_llama_reward_model_of_another_tokenizer(files, tmp_path,
                                                                          tiny_gpt2_dir, tiny_corpus):
    llama_dir = build_tiny_model("llama", "tiny", tiny_corpus, tmp_path / "llama", vocab_size=400)
    rm_tok = load_tokenizer(llama_dir)
    torch.manual_seed(0)
    rm = init_reward_model(llama_dir, rm_tok)
    rm.save_pretrained(tmp_path / "rm")
    rm_tok.save_pretrained(tmp_path / "rm")
    cfg = config(files, tmp_path / "run", f"reward.model={tmp_path / 'rm'}", "reward.functions=[]",
                 "batch.num_updates=2", "batch.prompts_per_update=8", "batch.micro_batch_size=8",
                 "log.sample_every=1", policy=tiny_gpt2_dir)
    p = train(cfg)
    scorer = p.scorer.parts[0][1]
    assert not scorer.reuse_ids and len(scorer.tokenizer) != len(p.tokenizer)
    sample = json.loads((tmp_path / "run" / "samples.jsonl").read_text().splitlines()[0])
    # the score PPO used equals the reward model's own score of the re-encoded text
    ids = rm_tok.encode(sample["prompt"], add_special_tokens=False)
    ids = [rm_tok.bos_token_id] + ids + rm_tok.encode(sample["response"], add_special_tokens=False)
    if len(sample["tokens"]) and sample["tokens"][-1] == p.tokenizer.eos_token:
        ids.append(rm_tok.eos_token_id)
    direct = score_sequences(scorer.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert float(direct) == pytest.approx(sample["score"], abs=1e-5)


# ---- bad input -------------------------------------------------------------------------------

def test_batch_sizes_that_do_not_divide_are_refused(files, tmp_path, tiny_gpt2_dir):
    with pytest.raises(ConfigError, match="micro_batch_size: 5 does not divide the mini-batch of 64"):
        config(files, tmp_path, "batch.micro_batch_size=5", policy=tiny_gpt2_dir)
    with pytest.raises(ConfigError, match="num_mini_batches: 3 does not divide the rollout batch of 64"):
        config(files, tmp_path, "batch.num_mini_batches=3", policy=tiny_gpt2_dir)
    with pytest.raises(ConfigError, match="samples_per_prompt: grpo compares samples"):
        config(files, tmp_path, "algo=grpo", policy=tiny_gpt2_dir)


@pytest.mark.parametrize("fn, message", [
    ("raises", "reward function '.*raises' raised ZeroDivisionError: oops"),
    ("wrong_length", "returned 1 scores for 64 responses"),
])
def test_a_broken_reward_function_stops_with_one_clear_line(fn, message, files, tmp_path, tiny_gpt2_dir):
    cfg = config(files, tmp_path, f"reward.functions=[{files / 'reward.py'}:{fn}]", policy=tiny_gpt2_dir)
    with pytest.raises(RlhfkitError, match=message):
        train(cfg)


def test_nan_scores_skip_updates_then_stop_with_the_last_checkpoint_named(files, tmp_path, tiny_gpt2_dir):
    cfg = config(files, tmp_path, f"reward.functions=[{files / 'reward.py'}:nan_scores]",
                 "log.max_bad_updates=2", policy=tiny_gpt2_dir)
    with pytest.raises(RlhfkitError, match="stopped after 2 updates in a row with non-finite scores"):
        train(cfg)
    assert "update 1 skipped: 64 of 64 scores from reward function" in (tmp_path / "log.txt").read_text()
    assert read_metrics(tmp_path) == []  # nothing poisoned was logged


def test_resume_refuses_a_missing_run_or_a_different_config(files, tmp_path, tiny_gpt2_dir):
    with pytest.raises(RlhfkitError, match="cannot resume: .* holds no run"):
        train(config(files, tmp_path / "nothing", "resume=true", policy=tiny_gpt2_dir))
    train(config(files, tmp_path / "run", "batch.num_updates=1", "batch.prompts_per_update=8",
                 "batch.micro_batch_size=8", policy=tiny_gpt2_dir))
    with pytest.raises(ConfigError, match="different config: optim.lr 0.003 vs 0.001"):
        train(config(files, tmp_path / "run", "batch.num_updates=1", "batch.prompts_per_update=8",
                     "batch.micro_batch_size=8", "optim.lr=1e-3", "resume=true", policy=tiny_gpt2_dir))


def test_cli_bad_batch_is_one_line_and_exit_code_2(files, tmp_path, tiny_gpt2_dir):
    cmd = [sys.executable, "-m", "rlhfkit", "ppo", f"policy={tiny_gpt2_dir}",
           f"prompts={files / 'prompts.jsonl'}", f"out={tmp_path}",
           f"reward.functions=[{files / 'reward.py'}:spaces]", "value.kind=head",
           "batch.micro_batch_size=5"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: batch.micro_batch_size: 5 does not divide the mini-batch of 16 rows"]


# ---- alignment, stop token, config files ---------------------------------------------------

def test_logits_are_read_one_position_before_their_token(tiny_gpt2_dir):
    """The off-by-one between logits and tokens: under greedy decoding every sampled token is
    the argmax of the logits that predicted it; reading them one position late breaks this."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from rlhfkit.generation import Sampling, sample_responses
    from rlhfkit.rollout import response_forward
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    enc = tok(["the cat likes", "What is 12 + 30? The answer"], return_tensors="pt", padding=True)
    ids, mask, _ = sample_responses(model, enc.input_ids, enc.attention_mask,
                                    Sampling(max_new_tokens=8, temperature=0), -1, tok.pad_token_id)
    with torch.no_grad():
        logits, _ = response_forward(model, enc.input_ids, enc.attention_mask, ids, mask)
    assert torch.equal(logits.argmax(-1), ids)
    # and against a plain full forward pass: the logits at input position P−1+t score token t
    ids, mask, _ = sample_responses(model, enc.input_ids, enc.attention_mask,
                                    Sampling(max_new_tokens=8, temperature=1.0), -1,
                                    tok.pad_token_id, torch.Generator().manual_seed(0))
    full_ids = torch.cat([enc.input_ids, ids], 1)
    full_mask = torch.cat([enc.attention_mask, mask], 1)
    with torch.no_grad():
        full = model(input_ids=full_ids, attention_mask=full_mask,
                     position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
        ours, _ = response_forward(model, enc.input_ids, enc.attention_mask, ids, mask)
    prompt_len = enc.input_ids.shape[1]
    assert torch.allclose(ours, full[:, prompt_len - 1:-1], atol=1e-5)
    assert not torch.allclose(ours, full[:, prompt_len:], atol=1e-2)  # one position late


def test_a_configured_stop_token_ends_responses(files, tmp_path, tiny_gpt2_dir):
    tok = load_tokenizer(tiny_gpt2_dir)
    stop = "Ġthe" if "Ġthe" in tok.get_vocab() else tok.convert_ids_to_tokens(100)
    cfg = config(files, tmp_path, f"sampling.stop_token={stop}", "batch.num_updates=1",
                 "batch.prompts_per_update=32", "sampling.temperature=1.0",
                 "sampling.max_new_tokens=24", policy=tiny_gpt2_dir)
    p = build(cfg, torch.device("cpu"), None)
    rollout = collect_rollout(p)
    stop_id = tok.convert_tokens_to_ids(stop)
    for ids, m, stopped in zip(rollout.response_ids, rollout.response_mask, rollout.has_eos):
        n = int(m.sum())
        assert (ids[n - 1] == stop_id) == bool(stopped)
        assert stop_id not in ids[:n - 1].tolist()
    with pytest.raises(RlhfkitError, match="sampling.stop_token: 'no-such-token' is not a token"):
        collect_rollout(build(config(files, tmp_path / "x", "sampling.stop_token=no-such-token",
                                     policy=tiny_gpt2_dir), torch.device("cpu"), None))


@pytest.mark.parametrize("name", ["ppo_sentiment.yaml", "grpo_function_reward.yaml", "rloo.yaml"])
def test_the_example_configs_load(name, files, tmp_path, tiny_gpt2_dir):
    path = Path(__file__).parents[2] / "configs" / name
    cfg = load_config(PPOConfig, path, [f"policy={tiny_gpt2_dir}", f"prompts={files / 'prompts.jsonl'}",
                                        f"out={tmp_path}", f"reward.functions=[{files / 'reward.py'}:spaces]",
                                        f"value.model={tiny_gpt2_dir}"])
    assert cfg.algo == name.split("_")[0].split(".")[0]
    assert cfg.batch_plan()["rollout batch"] >= cfg.batch.micro_batch_size


def test_prompt_order_visits_every_prompt_once_per_epoch_and_is_a_function_of_the_update():
    from rlhfkit.recipes.ppo import prompt_indices
    seen = [i for u in range(5) for i in prompt_indices(u, 10, 4, seed=3)]  # 2 epochs of 10
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]  # a new order each epoch
    assert prompt_indices(3, 10, 4, seed=3) == seen[12:16]


# ---------------------------------------------------------------------------- LoRA

@pytest.fixture(scope="module")
def sft_policy(files, tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2 after a short SFT on the corpus: LoRA adapts a trained model (on a
    random one the frozen output layer leaves the adapters little to steer)."""
    from rlhfkit.recipes.sft import SFTConfig
    from rlhfkit.recipes.sft import train as sft_train
    out = tmp_path_factory.mktemp("lora_sft")
    with open(out / "demos.jsonl", "w") as f:
        for line in Path(files / "prompts.jsonl").read_text().splitlines():
            prompt = json.loads(line)["prompt"]
            f.write(json.dumps({"prompt": prompt, "completion": " and the rest of it."}) + "\n")
    cfg = load_config(SFTConfig, None, [f"model={tiny_gpt2_dir}", f"data={out / 'demos.jsonl'}",
                                        f"out={out / 'run'}", "max_steps=60", "batch_size=16",
                                        "optim.lr=3e-3", "device=cpu", "eval_fraction=0"])
    return sft_train(cfg).run_dir / "model"


def test_lora_ppo_raises_the_reward_and_saves_a_plain_merged_policy(files, tmp_path, sft_policy):
    from transformers import AutoModelForCausalLM
    p = train(config(files, tmp_path / "lora", "lora.r=8", "optim.lr=1e-2",
                     "batch.num_updates=16", policy=sft_policy))
    assert p.ref is None  # the reference is the policy's own base, adapters off
    base = AutoModelForCausalLM.from_pretrained(sft_policy).state_dict()
    frozen = {k.replace("base_model.model.", "").replace("base_layer.", ""): v
              for k, v in p.lm.state_dict().items() if "lora_" not in k}
    for key, value in base.items():  # the base weights never moved
        assert torch.equal(frozen[key], value), key
    rows = read_metrics(tmp_path / "lora")
    start, end = mean_score(rows, slice(0, 3)), mean_score(rows, slice(-3, None))
    assert end > start + 0.5, (start, end)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora/policy")  # no peft needed
    assert not any("lora" in k for k in merged.state_dict())
    assert (tmp_path / "lora/checkpoints/step-000016/policy/adapter_model.safetensors").is_file()


def test_lora_resume_after_a_crash_equals_a_run_that_never_stopped(files, tmp_path, sft_policy,
                                                                   tiny_gpt2_dir, monkeypatch):
    common = ["lora.r=4", "lora.save=adapter", "batch.num_updates=4", "log.save_every=2",
              "batch.prompts_per_update=16", "batch.micro_batch_size=8", "value.kind=critic",
              f"value.model={tiny_gpt2_dir}"]
    whole = train(config(files, tmp_path / "whole", *common, policy=sft_policy))
    monkeypatch.setenv("RLHFKIT_TEST_CRASH_AT", "3")  # dies inside update 3
    with pytest.raises(RlhfkitError, match="killed for the test"):
        train(config(files, tmp_path / "cut", *common, policy=sft_policy))
    monkeypatch.delenv("RLHFKIT_TEST_CRASH_AT")
    resumed = train(config(files, tmp_path / "cut", *common, "resume=true", policy=sft_policy))
    for model in ("policy", "critic"):
        a, b = getattr(whole, model).state_dict(), getattr(resumed, model).state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (model, key)
    assert (tmp_path / "cut/policy/adapter_config.json").is_file()  # saved as the adapter


# ---------------------------------------------------------------------------- compute options

def test_gradient_checkpointing_changes_no_result(files, tmp_path, tiny_gpt2_dir):
    common = ["batch.num_updates=2", "batch.prompts_per_update=16", "batch.micro_batch_size=8",
              "value.kind=critic", f"value.model={tiny_gpt2_dir}"]
    plain = train(config(files, tmp_path / "plain", *common, policy=tiny_gpt2_dir))
    saved = train(config(files, tmp_path / "ckpt", *common, "compute.gradient_checkpointing=true",
                         policy=tiny_gpt2_dir))
    assert saved.lm.is_gradient_checkpointing and not saved.lm.training  # eval between steps
    rows_a, rows_b = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "ckpt")
    for a, b in zip(rows_a, rows_b):
        for key in ("loss/policy", "loss/value", "grad_norm", "score/mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    for (name, a), b in zip(plain.policy.state_dict().items(), saved.policy.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_bf16_autocast_trains_with_fp32_weights_and_losses(files, tmp_path, tiny_gpt2_dir):
    p = train(config(files, tmp_path / "bf16", "compute.precision=bf16", "batch.num_updates=2",
                     "batch.prompts_per_update=8", "batch.micro_batch_size=8",
                     "sampling.max_new_tokens=6", policy=tiny_gpt2_dir))
    assert p.bf16 and all(q.dtype == torch.float32 for q in p.policy.parameters())
    rows = read_metrics(tmp_path / "bf16")
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss/policy"])) for r in rows)


def test_reward_clip_bounds_the_scores_the_policy_is_trained_on(files, tmp_path, tiny_gpt2_dir):
    """`reward.clip` caps what a response can earn (the demo's guard against narrowing onto
    the reward model's favourite phrases): scores stay in [-clip, clip] while the raw scores,
    logged beside them, go past it."""
    out = tmp_path / "clipped"
    train(config(files, out, "reward.clip=1.0", "batch.num_updates=3",
                 "batch.prompts_per_update=32", policy=tiny_gpt2_dir))
    rows = read_metrics(out)
    assert all(abs(r["score/mean"]) <= 1.0 and r["score/std"] <= 1.0 for r in rows)
    assert max(r["score/raw_mean"] for r in rows) > 1.0   # the spaces reward is 1.5 or so
