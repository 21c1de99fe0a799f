#!/usr/bin/env python3
"""rlhfkit against the TRL baselines: one machine, one run, runs alternated (A B A B ...).

On the same model folder, each round runs the TRL baseline script of the shared bench folder
in its own venv, then `bench/ppo_throughput.py` with this Python; the ratios printed are
rlhfkit's median over rounds divided by TRL's (below 1: rlhfkit is faster).

    python bench/compare_trl.py --models ../bench-models/tiny-s --rounds 3 --updates 10
    python bench/compare_trl.py --models DIR --rlhfkit-args "--shared-value-head --bf16"
    python bench/compare_trl.py --models DIR --algo grpo

TRL venvs (outside the repository; see the headers of the baseline scripts):

    python3 -m venv /work/trl-venvs/trl112 && /work/trl-venvs/trl112/bin/pip install \\
        torch==2.13.0 -r shared/bench/requirements-trl-baseline.txt        # PPO (TRL 1.12)
    python3 -m venv /work/trl-venvs/trl116 && /work/trl-venvs/trl116/bin/pip install \\
        torch==2.13.0 -r shared/bench/requirements-trl116-baseline.txt     # GRPO (TRL 1.16)
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parent.parent / "shared" / "bench"
DEFAULT_VENVS = {"ppo": "/work/trl-venvs/trl112/bin/python",
                 "grpo": "/work/trl-venvs/trl116/bin/python"}
SCRIPTS = {"ppo": "trl_ppo_baseline.py", "grpo": "trl_grpo_baseline.py"}
# (label, key in TRL's RESULT, key in rlhfkit's RESULT)
ROWS = [("s/update (median)", "update_s_median", "update_s_median"),
        ("rollout phase s", "rollout_phase_s_median", "rollout_phase_s_median"),
        ("  of which generate s", "generate_s_median", "generate_s_median"),
        ("train phase s", "train_phase_s_median", "train_s_median"),
        ("generate tokens/s", "generate_tokens_per_s", "generate_tokens_per_s"),
        ("peak RSS MiB", "peak_rss_mib", "peak_rss_mib")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="folder written by make_tiny_models.py")
    p.add_argument("--algo", choices=("ppo", "grpo"), default="ppo")
    p.add_argument("--rounds", type=int, default=3, help="TRL, rlhfkit pairs")
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--trl-python", default=None, help="the TRL venv's python (default: "
                   f"{DEFAULT_VENVS['ppo']} for ppo, {DEFAULT_VENVS['grpo']} for grpo)")
    p.add_argument("--shared-bench", default=str(DEFAULT_SHARED),
                   help="folder holding the TRL baseline scripts")
    p.add_argument("--rlhfkit-args", default="", help="more ppo_throughput.py flags, quoted")
    p.add_argument("--json-out", default=None, help="write every run's RESULT here")
    return p.parse_args(argv)


def run_one(cmd: list[str], json_out: Path) -> dict:
    """Run a benchmark command that writes its RESULT dict to `json_out`."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    done = subprocess.run(cmd + ["--json-out", str(json_out)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(json_out.read_text())


def noisy(result: dict) -> bool:
    return result.get("foreign_cpu_cores_max", 0.0) > 0.1


def main(argv=None) -> int:
    a = parse_args(argv)
    trl_python = a.trl_python or DEFAULT_VENVS[a.algo]
    common = ["--models", a.models, "--updates", str(a.updates), "--threads", str(a.threads)]
    trl_cmd = [trl_python, str(Path(a.shared_bench) / SCRIPTS[a.algo]), *common]
    ours_cmd = [sys.executable, str(HERE / "ppo_throughput.py"), "--algo", a.algo, *common,
                *shlex.split(a.rlhfkit_args)]
    runs = {"trl": [], "rlhfkit": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, cmd in (("trl", trl_cmd), ("rlhfkit", ours_cmd)):
                res = run_one(cmd, Path(tmp) / f"{name}-{r}.json")
                runs[name].append(res)
                print(f"  round {r + 1} {name}: {res['update_s_median']:.3f} s/update"
                      + ("  (MACHINE NOT QUIET)" if noisy(res) else ""), flush=True)
    print(f"\n{a.algo.upper()} on {a.models}, {a.rounds} rounds x {a.updates} updates, "
          f"{a.threads} threads; medians over rounds; rlhfkit flags: '{a.rlhfkit_args}'")
    print(f"{'':24s} {'TRL':>10s} {'rlhfkit':>10s} {'ratio':>8s}")
    for label, trl_key, our_key in ROWS:
        theirs = statistics.median(r[trl_key] for r in runs["trl"])
        ours = statistics.median(r[our_key] for r in runs["rlhfkit"])
        print(f"{label:24s} {theirs:10.3f} {ours:10.3f} {ours / theirs:8.3f}")
    if any(noisy(r) for rs in runs.values() for r in rs):
        print("MACHINE NOT QUIET during some runs: other processes used CPU; compare with care")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
