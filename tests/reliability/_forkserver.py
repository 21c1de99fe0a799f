"""A fork server for the crash tests: it imports torch, transformers and rlhfkit once, then
forks one child per `rlhfkit` command. Dozens of runs killed with SIGKILL then cost a
fraction of a second each to start, instead of seconds of imports on shared cores.

Every child is a real process running `rlhfkit.cli.main(argv)` — the function behind the
`rlhfkit` command — with stdout and stderr in a log file, and exits with its exit code.
The test kills it with `os.kill(pid, SIGKILL)`.

Protocol, one JSON object per line:
    stdin {"argv": [...], "env": {...}, "log": PATH}  ->  stdout {"pid": N}
    stdin {"poll": N}   ->  {"status": null} while running, else {"status": code}
    stdin {"wait": N}   ->  {"status": code}      (code < 0: killed by signal -code)

Network: every TCP/UDP connection and name lookup is refused and recorded in the file
$RLHFKIT_NETLOG, and the server runs without HF_HUB_OFFLINE, so the runs also show that
local models and files need no network.
"""

import json
import os
import socket
import sys


def guard_network(logfile: str) -> None:
    """Refuse and record every connection to another machine (Unix sockets still work)."""
    def record(what) -> None:
        with open(logfile, "a") as f:
            f.write(f"{os.getpid()} {what!r}\n")

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            record(address)
            raise OSError("network access refused by the test")
        return real_connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        record(host)
        raise socket.gaierror("name lookup refused by the test")

    socket.socket.connect = connect
    socket.socket.connect_ex = lambda self, address: connect(self, address) or 0
    socket.getaddrinfo = getaddrinfo


def child(request: dict) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.update(request.get("env", {}))
        import torch
        torch.set_num_threads(1)  # 2 shared cores: one thread avoids spin-waiting
        from rlhfkit.cli import main
        code = main(request["argv"])
    except BaseException:  # noqa: BLE001 - a crash of the child shows in its log
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    guard_network(os.environ["RLHFKIT_NETLOG"])
    # Import everything a run needs, but run no torch op: the children start from here.
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers.models.gpt2 import modeling_gpt2  # noqa: F401
    from tqdm.auto import tqdm  # noqa: F401

    import rlhfkit.cli  # noqa: F401
    import rlhfkit.recipes.ppo  # noqa: F401
    import rlhfkit.recipes.reward_model  # noqa: F401
    import rlhfkit.recipes.sft  # noqa: F401
    reply({"ready": True})
    finished = {}  # pid -> exit code, for children already reaped by a poll
    for line in sys.stdin:
        request = json.loads(line)
        if "argv" in request:
            pid = os.fork()
            if pid == 0:
                child(request)
            reply({"pid": pid})
        elif "poll" in request:
            pid = request["poll"]
            if pid not in finished:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    finished[pid] = os.waitstatus_to_exitcode(status)
            reply({"status": finished.get(pid)})
        else:
            pid = request["wait"]
            if pid not in finished:
                finished[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            reply({"status": finished[pid]})


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    serve()
