"""The `rlhfkit label` server over plain HTTP, as its own process: malformed requests get a
4xx answer and never stop it, a token guards every request, annotators working at the same
time get different pairs (or the same ones with overlap), bad input to the command is one
line, and pairs can be sampled from a real tiny GPT-2."""

import http.client
import json
import socket
import subprocess
import sys
import threading

import pytest

from rlhfkit.cli import main as cli
from rlhfkit.config import load_config
from rlhfkit.label import read_pairs
from rlhfkit.label.command import LabelConfig, load_pairs

PAIRS = 12


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Prompt {i}:", "response_a": f" a{i}", "response_b": f" b{i}"}
            for i in range(PAIRS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def request(port, method, path, body=None, headers=None, raw: bytes | None = None):
    """(status, JSON or text) of one request; `body` is sent as JSON unless `raw` is given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent_headers = {"Content-Type": "application/json"} if body is not None else {}
    sent_headers.update(headers or {})
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    connection.request(method, path, body=data, headers=sent_headers)
    response = connection.getresponse()
    text = response.read().decode("utf-8", "replace")
    connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def raw_exchange(port, payload: bytes) -> bytes:
    """Send bytes that need not be HTTP at all; return what comes back (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while len(chunks) < 64:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_malformed_requests_get_a_4xx_answer_and_never_stop_the_server(label_server, pairs_file,
                                                                       tmp_path):
    server = label_server([f"pairs={pairs_file}", "out=prefs.jsonl"])
    port = server.port
    judge = {"annotator": "ana", "pair_id": "x" * 16, "label": "a", "left": "a"}
    cases = [
        (("POST", "/api/next"), {"raw": b'{"annotator": "ana"}'}, 415),      # no content type
        (("POST", "/api/next"), {"body": None, "raw": b"{not json",
                                 "headers": {"Content-Type": "application/json"}}, 400),
        (("POST", "/api/next"), {"body": None, "raw": b"\xff\xfe\x00",
                                 "headers": {"Content-Type": "application/json"}}, 400),
        (("POST", "/api/next"), {"body": ["ana"]}, 400),
        (("POST", "/api/next"), {"body": {"annotator": "ana", "admin": True}}, 422),
        (("POST", "/api/next"), {"body": {"annotator": ""}}, 422),
        (("POST", "/api/next"), {"body": {"annotator": "a" * 65}}, 422),
        (("POST", "/api/next"), {"body": {"annotator": "ana\x00"}}, 422),
        (("POST", "/api/next"), {"body": {"annotator": 7}}, 422),
        (("POST", "/api/next"), {"body": {"annotator": "ana", "pair_id": 5}}, 422),
        (("POST", "/api/next"), {"body": {"annotator": "ana", "pair_id": "p", "left": "x"}}, 422),
        (("POST", "/api/judge"), {"body": {**judge, "label": "c"}}, 422),
        (("POST", "/api/judge"), {"body": {**judge, "left": "left"}}, 422),
        (("POST", "/api/judge"), {"body": {k: v for k, v in judge.items() if k != "left"}}, 422),
        (("POST", "/api/judge"), {"body": judge}, 404),                       # no such pair
        (("POST", "/api/undo"), {"body": {"annotator": "ana", "pad": "x" * 20000}}, 413),
        (("GET", "/api/judge"), {}, 405),
        (("GET", "/admin"), {}, 404),
        (("GET", "/"), {"headers": {"Host": "evil.example:80"}}, 400),        # DNS rebinding
    ]
    for (method, path), kwargs, expected in cases:
        status, answer = request(port, method, path, **kwargs)
        assert status == expected, (method, path, kwargs, status, answer)
        assert isinstance(answer, dict) and answer["error"], answer
    for garbage in (b"GARBAGE\r\n\r\n", b"POST /api/next HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: -5\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
        answer = raw_exchange(port, garbage)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:80]
    assert server.alive()
    status, health = request(port, "GET", "/healthz")
    assert status == 200 and health["progress"]["labelled"] == 0
    assert not (tmp_path / "prefs.jsonl").exists()   # nothing malformed was written


def test_a_token_guards_every_request(label_server, pairs_file):
    server = label_server([f"pairs={pairs_file}", "out=prefs.jsonl", "token=s3cret-token"])
    assert server.url.endswith("/?token=s3cret-token")
    port = server.port
    assert request(port, "GET", "/")[0] == 403
    assert request(port, "GET", "/?token=wrong-token")[0] == 403
    assert request(port, "POST", "/api/next", {"annotator": "ana"})[0] == 403
    status, page = request(port, "GET", "/?token=s3cret-token")
    assert status == 200 and "<title>rlhfkit label</title>" in page
    status, answer = request(port, "POST", "/api/next", {"annotator": "ana"},
                             headers={"X-Rlhfkit-Token": "s3cret-token"})
    assert status == 200 and answer["pair"]["prompt"] == "Prompt 0:"


def label_all(port, name: str, seen: list) -> None:
    """One annotator's loop: take a pair, judge it, until nothing is left (bounded)."""
    answer = request(port, "POST", "/api/next", {"annotator": name})[1]
    for _ in range(4 * PAIRS):
        if answer["pair"] is None:
            break
        pair = answer["pair"]
        seen.append((name, pair["pair_id"]))
        judgement = {"annotator": name, "pair_id": pair["pair_id"], "label": pair["left_is"],
                     "left": pair["left_is"]}
        status, answer = request(port, "POST", "/api/judge", judgement)
        assert status == 200 and answer["status"] == "recorded"


def test_annotators_at_once_get_different_pairs_unless_overlap_is_asked(label_server, pairs_file,
                                                                        tmp_path, capsys):
    for overlap, out in ((1, "solo.jsonl"), (2, "twice.jsonl")):
        server = label_server([f"pairs={pairs_file}", f"out={out}", f"overlap={overlap}"])
        seen: list = []
        threads = [threading.Thread(target=label_all, args=(server.port, name, seen))
                   for name in ("ana", "bob", "cyd")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        rows = [json.loads(line) for line in (tmp_path / out).read_text().splitlines()]
        per_pair: dict = {}
        for row in rows:
            per_pair.setdefault(row["pair_id"], []).append(row["annotator"])
        assert len(per_pair) == PAIRS
        assert all(len(names) == len(set(names)) == overlap for names in per_pair.values())
        assert sorted((r["annotator"], r["pair_id"]) for r in rows) == sorted(seen)
    assert cli(["label", "stats=true", f"out={tmp_path / 'twice.jsonl'}",
                f"pairs={pairs_file}"]) == 0
    printed = capsys.readouterr().out
    assert f"24 preferences, 0 ties, 0 skips; {PAIRS} pairs judged of {PAIRS}" in printed
    # every annotator picked the left response: left share 1, and perfect agreement only
    # where two annotators happened to see the same side
    assert f"agreement on {PAIRS} pairs judged by 2 or more annotators" in printed


def test_bad_input_to_the_command_is_one_clear_line(pairs_file, tmp_path, tiny_gpt2_dir,
                                                    capsys, monkeypatch):
    bad_prompts = tmp_path / "bad_prompts.jsonl"
    bad_prompts.write_text('{"prompt": "fine"}\n{"prompt": "broken\n')
    other_format = tmp_path / "other.jsonl"
    other_format.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    monkeypatch.chdir(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        cases = [
            (["label", f"model={tiny_gpt2_dir}", f"prompts={bad_prompts}", "out=p.jsonl",
              "port=0"], "bad_prompts.jsonl:2: invalid JSON"),
            (["label", f"pairs={pairs_file}", "out=p.jsonl", f"port={port}"],
             f"port {port} on 127.0.0.1 is in use"),
            (["label", f"pairs={pairs_file}", f"out={other_format}", "port=0"],
             "other.jsonl:1: field 'pair_id': missing or not a string"),
            (["label", f"pairs={bad_prompts}", "out=p.jsonl", "port=0"],
             "bad_prompts.jsonl:2: invalid JSON"),
            (["label", f"pairs={pairs_file}", "out=p.jsonl", "port=0", "host=no.such.host."],
             "host: cannot listen on 'no.such.host.'"),
            (["label", "stats=true", "out=missing.jsonl"], "missing.jsonl: no such file"),
        ]
        for args, message in cases:
            assert cli(args) == 2, args
            stderr = capsys.readouterr().err
            assert stderr.startswith("error: ") and message in stderr, stderr
            assert len(stderr.strip().splitlines()) == 1, stderr
    # and as a process: exit code 2, one line on stderr
    done = run_cli("label", f"pairs={pairs_file}", f"out={other_format}", "port=0")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "not a judgements file of rlhfkit label" in done.stderr


def test_pairs_sampled_from_a_model_ahead_of_time_or_at_start(tiny_gpt2_dir, tmp_path,
                                                              label_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n"
                               for p in ("The cat", "A dog likes", "What is 2 + 3?")))
    args = [f"model={tiny_gpt2_dir}", f"prompts={prompts}", "pairs_per_prompt=2",
            "sampling.max_new_tokens=8", "sampling.device=cpu"]
    assert cli(["sample-pairs", *args, f"out={tmp_path / 'pairs.jsonl'}"]) == 0
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    assert [p.prompt for p in pairs] == [p for p in ("The cat", "A dog likes", "What is 2 + 3?")
                                         for _ in range(2)]
    assert all(p.response_a != p.response_b and p.response_a.strip() for p in pairs)
    assert cli(["sample-pairs", *args, f"out={tmp_path / 'pairs.jsonl'}"]) == 2   # no overwrite
    # `rlhfkit label model=... prompts=...` samples at start (here in-process, to spare
    # the test a second torch import) and keeps the pairs for a restart (here a process)
    cfg = load_config(LabelConfig, None, [*args, "out=prefs.jsonl"])
    sampled = tmp_path / "prefs.pairs.jsonl"
    assert load_pairs(cfg, sampled) == read_pairs(sampled) and len(read_pairs(sampled)) == 6
    server = label_server([*args, "out=prefs.jsonl"])
    assert "reusing the 6 pairs sampled earlier" in "".join(server.output)
    status, answer = request(server.port, "POST", "/api/next", {"annotator": "ana"})
    assert answer["pair"]["pair_id"] == read_pairs(sampled)[0].pair_id
