"""bench/ppo_throughput.py runs on a tiny model folder of the benchmark layout and ends with
its `RESULT {json}` line. Timings are not checked: they are benchmark figures."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhfkit.models import load_tokenizer

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ppo_throughput.py"
KEYS = ("update_s_median", "generate_tokens_per_s", "train_flops_fraction", "peak_rss_mib")


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory, tiny_gpt2_dir):
    """The layout of shared/bench/make_tiny_models.py: policy/, reward/, value/, tokenizer/
    and prompts.jsonl, from the tiny GPT-2 of the test suite."""
    out = tmp_path_factory.mktemp("bench_models")
    tokenizer = load_tokenizer(tiny_gpt2_dir)
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "policy").mkdir()
    for name in ("config.json", "model.safetensors"):
        (out / "policy" / name).symlink_to(Path(tiny_gpt2_dir) / name)
    for name in ("reward", "value"):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2_dir, num_labels=1)
        model.save_pretrained(out / name)
    words = "the cat sees a red apple every day and the dog likes bread".split()
    with open(out / "prompts.jsonl", "w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": " ".join(words[i % 5:i % 5 + 4])}) + "\n")
    return out


@pytest.fixture(scope="module")
def bench():
    """bench/ppo_throughput.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("ppo_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("extra", [[], ["--algo", "grpo", "--batch-size", "8"],
                                   ["--shared-value-head"]],
                         ids=["ppo-critic", "grpo", "ppo-head"])
def test_bench_prints_its_result_line(bench, bench_models, tmp_path, capsys, extra):
    threads = torch.get_num_threads()
    try:  # in this process: no second start-up of torch and transformers
        assert bench.main(["--models", str(bench_models), "--updates", "2", "--batch-size", "4",
                           "--response-length", "4", "--num-ppo-epochs", "1",
                           "--num-mini-batches", "2", "--threads", "1", "--peak-seconds", "0.05",
                           "--out", str(tmp_path / "run"),
                           "--json-out", str(tmp_path / "result.json"), *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last[len("RESULT "):])
    assert all(result[k] > 0 for k in KEYS), {k: result[k] for k in KEYS}
    assert result == json.loads((tmp_path / "result.json").read_text())
    assert "time per update (median)" in out
