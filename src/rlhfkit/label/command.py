"""`rlhfkit label`: serve the labelling page, or report on what was labelled.

    rlhfkit label pairs=pairs.jsonl out=prefs.jsonl              # pairs from sample-pairs
    rlhfkit label model=runs/sft/model prompts=p.jsonl out=prefs.jsonl pairs_per_prompt=2
    rlhfkit label ... host=0.0.0.0 port=8765                     # a team: needs the token
    rlhfkit label stats=true out=prefs.jsonl                     # counts and agreement

One run, top to bottom (`main`):

    1. judgements  read OUT and its ties/skips file back (resume); rows of another format
                   stop here, before any model is loaded
    2. socket      bind HOST:PORT now, so a port in use is one clear line, not a traceback
                   after minutes of sampling
    3. pairs       read PAIRS, or sample them from MODEL for PROMPTS and keep them in
                   OUT.stem + .pairs.jsonl, so a restart shows the very same pairs
    4. serve       uvicorn on that socket until Ctrl-C; every judgement is on disk before
                   the page gets its next pair
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import socket
import string
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import REQUIRED, option
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.label.pairs import Pair, SamplingOptions, read_pairs, sample_pairs, write_pairs
from rlhfkit.label.stats import format_stats, label_stats
from rlhfkit.label.store import JudgementStore, read_judgements, side_files

__all__ = ["LabelConfig", "main", "bind", "access_token", "page_url", "load_pairs"]

_TOKEN_CHARS = set(string.ascii_letters + string.digits + "-_.~")


@dataclass
class LabelConfig:
    """Options of `rlhfkit label`."""
    out: str = option(REQUIRED, "JSONL file the preferences are appended to (what `rlhfkit "
                                "reward data=...` reads); ties and skips go to OUT.stem + "
                                ".ties_skips.jsonl")
    pairs: str | None = option(None, "pairs prepared with `rlhfkit sample-pairs` (labelling "
                                     "then needs no model); or give model and prompts")
    model: str | None = option(None, "model to sample the pairs from (usually the SFT model)")
    prompts: str | None = option(None, "prompts file to sample pairs for (with model)")
    pairs_per_prompt: int = option(1, "pairs sampled for each prompt (with model)", gt=0)
    sampling: SamplingOptions = option(SamplingOptions, "how responses are sampled (with model)")
    host: str = option("127.0.0.1", "address to listen on; any other than loopback requires "
                                    "the token in the URL")
    port: int = option(8765, "port to listen on (0: any free port)", ge=0, le=65535)
    token: str | None = option(None, "token the URL must carry (?token=...); null: a random "
                                     "one when host is not loopback, none on loopback")
    overlap: int = option(1, "different annotators who judge each pair (2 or more to "
                             "measure agreement with stats=true)", gt=0)
    lease_seconds: float = option(900.0, "how long a pair shown to an annotator stays "
                                         "reserved for them", gt=0)
    stats: bool = option(False, "print counts and inter-annotator agreement of `out`, then "
                                "exit")

    def validate(self) -> None:
        if self.token is not None and (len(self.token) < 8 or set(self.token) - _TOKEN_CHARS):
            raise ConfigError("token: at least 8 characters among letters, digits and -_.~")
        if self.stats:
            return
        if self.pairs is not None and (self.model or self.prompts):
            raise ConfigError("pairs: give pairs=FILE, or model= and prompts=, not both")
        if self.pairs is None and not (self.model and self.prompts):
            raise ConfigError("give pairs=FILE (from `rlhfkit sample-pairs`), or model=DIR and "
                              "prompts=FILE to sample pairs now")


def main(cfg: LabelConfig) -> int:
    """`rlhfkit label`: stats, or serve the page until Ctrl-C."""
    out = Path(cfg.out)
    ties_skips, sampled = side_files(out)
    if cfg.stats:
        return print_stats(cfg, out)
    # 1. judgements so far (a file of another format fails here)
    done = len(read_judgements(out, "prefs")) + len(read_judgements(ties_skips, "others"))
    # 2. the socket
    sock, loopback = bind(cfg.host, cfg.port)
    try:
        # 3. pairs
        pairs = load_pairs(cfg, sampled)
        store = JudgementStore(pairs, out, cfg.overlap, cfg.lease_seconds)
        # 4. serve
        token = access_token(cfg.token, loopback)
        progress = store.progress()
        print(f"rlhfkit label: {len(pairs)} pairs, {progress['labelled']} / {progress['total']} "
              f"judgements done ({done} lines in {out} and {ties_skips.name})", flush=True)
        if not loopback:
            print("listening beyond this machine: whoever can reach it and has the URL with "
                  "its token can label; the traffic is plain HTTP", flush=True)
        print(f"open {page_url(cfg.host, sock, token)}  (Ctrl-C stops; nothing is lost)",
              flush=True)
        serve(store, sock, token, loopback)
    finally:
        sock.close()
    progress = store.progress()
    print(f"stopped: {progress['labelled']} / {progress['total']} judgements; preferences in "
          f"{out}, ties and skips in {ties_skips}", flush=True)
    return 0


def print_stats(cfg: LabelConfig, out: Path) -> int:
    if not out.is_file():
        raise RlhfkitError(f"{out}: no such file (nothing labelled yet?)")
    ties_skips, sampled = side_files(out)
    source = cfg.pairs or (sampled if sampled.is_file() else None)
    total = len(read_pairs(source)) if source else None
    stats = label_stats(read_judgements(out, "prefs"), read_judgements(ties_skips, "others"), total)
    print(format_stats(stats, str(out)))
    return 0


def bind(host: str, port: int) -> tuple[socket.socket, bool]:
    """A listening socket on host:port, and whether host is a loopback address."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise RlhfkitError(f"host: cannot listen on {host!r} ({err.strerror})") from None
    try:
        sock = socket.create_server(address, family=family, backlog=64)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise RlhfkitError(f"port {port} on {host} is in use (another rlhfkit label?); "
                               "pass port=N, or port=0 for any free port") from None
        if err.errno == errno.EACCES:
            raise RlhfkitError(f"not allowed to listen on port {port} (ports below 1024 need "
                               "root); pass port=N") from None
        raise RlhfkitError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock, ipaddress.ip_address(address[0]).is_loopback


def access_token(token: str | None, loopback: bool) -> str | None:
    """The token every request must carry: the one given, else a random one unless the
    server listens on loopback only (then only this machine's users can reach it)."""
    return token or (None if loopback else secrets.token_urlsafe(16))


def page_url(host: str, sock: socket.socket, token: str | None) -> str:
    """The address to open: the bound address itself, except that a wildcard host (all
    interfaces) is shown as this machine's name."""
    address, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::", ""):
        address = socket.gethostname()
    elif ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{port}/" + (f"?token={token}" if token else "")


def load_pairs(cfg: LabelConfig, sampled: Path) -> list[Pair]:
    """PAIRS; or the pairs sampled in an earlier session (kept in `sampled`); or new ones."""
    if cfg.pairs is not None:
        pairs = read_pairs(cfg.pairs)
    elif sampled.is_file():
        pairs = read_pairs(sampled)
        print(f"reusing the {len(pairs)} pairs sampled earlier, in {sampled} (delete it to "
              "sample new ones)", flush=True)
    else:
        print(f"sampling {cfg.pairs_per_prompt} pair(s) per prompt of {cfg.prompts} from "
              f"{cfg.model} ...", flush=True)
        pairs = sample_pairs(cfg.model, cfg.prompts, cfg.pairs_per_prompt, cfg.sampling)
        if not pairs:
            raise RlhfkitError("every sampled pair had identical or blank responses; raise "
                               "sampling.temperature or sampling.max_new_tokens")
        write_pairs(sampled, pairs)
    return pairs


def serve(store: JudgementStore, sock: socket.socket, token: str | None, loopback: bool) -> None:
    """Run uvicorn on the bound socket until Ctrl-C or SIGTERM."""
    import uvicorn

    from rlhfkit.label.server import create_app
    config = uvicorn.Config(create_app(store, token, loopback), log_level="warning",
                            access_log=False, lifespan="off", proxy_headers=False,
                            server_header=False, timeout_graceful_shutdown=3)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down cleanly, then re-raises Ctrl-C
        pass
