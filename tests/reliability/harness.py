"""Helpers of the reliability tests: the fork server client, log polling, data files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


class ForkServer:
    """Starts `rlhfkit <argv>` as a forked child of one long-lived Python process."""

    def __init__(self, workdir: Path):
        self.netlog = workdir / "network.log"
        self.netlog.write_text("")
        env = {k: v for k, v in os.environ.items()
               if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   RLHFKIT_NETLOG=str(self.netlog), PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen([sys.executable, str(HERE / "_forkserver.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(workdir / "forkserver.log", "w"), text=True,
                                     env=env)
        assert self._ask(None) == {"ready": True}

    def _ask(self, request: dict | None) -> dict:
        if request is not None:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died; see forkserver.log")
        return json.loads(line)

    def start(self, argv: list[str], log: Path, env: dict | None = None) -> int:
        return self._ask({"argv": [str(a) for a in argv], "env": env or {},
                          "log": str(log)})["pid"]

    def poll(self, pid: int) -> int | None:
        return self._ask({"poll": pid})["status"]

    def wait(self, pid: int) -> int:
        return self._ask({"wait": pid})["status"]

    def run(self, argv: list[str], log: Path, env: dict | None = None) -> int:
        return self.wait(self.start(argv, log, env))

    def kill(self, pid: int) -> bool:
        """SIGKILL `pid`; True when it was still running (a kill point), False when it had
        already exited."""
        if self.poll(pid) is not None:
            return False
        os.kill(pid, signal.SIGKILL)
        return self.wait(pid) == -signal.SIGKILL

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def wait_for_text(log: Path, text: str, server: ForkServer, pid: int,
                  timeout: float = 180.0) -> None:
    """Poll `log` until it holds `text`; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        status = server.poll(pid)
        if status is not None:
            raise AssertionError(f"process ended ({status}) before '{text}':\n"
                                 + log.read_text(errors="replace")[-3000:])
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for '{text}' in {log}")


# ---------------------------------------------------------------------------- data

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "our teacher", "a small bird",
            "the movie", "this book", "the weather", "her brother", "the robot", "a farmer"]
FILLER = ["the", "a", "house", "road", "tree", "river", "song", "bread", "box", "stone"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    verbs = ["likes", "sees", "finds", "wants", "loves", "reads"]
    objects = ["a red apple", "the long road", "some warm bread", "an old song"]
    return [{"prompt": f"What does {s} do on {day}?",
             "completion": f" {s.capitalize()} {rng.choice(verbs)} {rng.choice(objects)}."}
            for s in SUBJECTS for day in ("Monday", "Friday")]


def preference_rows(n: int, seed: int) -> list[dict]:
    """Chosen responses hold the word 'wonderful' more often than rejected ones."""
    rng = random.Random(seed)

    def response(count: int) -> str:
        words = [rng.choice(FILLER) for _ in range(6 - count)] + ["wonderful"] * count
        rng.shuffle(words)
        return " " + " ".join(words) + "."

    rows = []
    for _ in range(n):
        k = rng.randint(1, 3)
        rows.append({"prompt": f"Describe {rng.choice(SUBJECTS)}.", "chosen": response(k),
                     "rejected": response(rng.randint(0, k - 1))})
    return rows


def prompt_rows(n: int) -> list[dict]:
    return [{"prompt": f"{SUBJECTS[i % len(SUBJECTS)].capitalize()} {verb}"}
            for i, verb in zip(range(n), ["likes", "sees", "finds", "wants"] * n)]
