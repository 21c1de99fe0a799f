"""`rlhfkit.label` without a server: pairs files, the judgement store (assignment, overlap,
leases, undo, resume, files of another format), agreement statistics, options."""

import json
import socket

import pytest

from rlhfkit.config import load_config
from rlhfkit.data import load_preferences
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.label import (JudgementStore, Pair, krippendorff_alpha, label_stats, make_pair_id,
                           read_judgements, read_pairs, side_files, write_pairs)
from rlhfkit.label.command import LabelConfig, access_token, bind, page_url
from rlhfkit.label.store import UnknownPair


def make_pairs(n: int) -> list[Pair]:
    rows = [(f"Prompt {i}:", f" answer A{i}", f" answer B{i}") for i in range(n)]
    return [Pair(make_pair_id(*r), *r) for r in rows]


class Clock:
    """A clock the test moves by hand, for leases."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------- pairs files

def test_pair_ids_are_stable_and_do_not_collide_by_concatenation():
    assert make_pair_id("p", "a", "b") == make_pair_id("p", "a", "b")
    assert make_pair_id("p", "ab", "c") != make_pair_id("p", "a", "bc")
    assert len(make_pair_id("p", "a", "b")) == 16


def test_pairs_file_round_trip_and_ids_computed_when_absent(tmp_path):
    pairs = make_pairs(3)
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    assert read_pairs(path) == pairs
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"prompt": "Hi", "response_a": " x", "response_b": " y"}) + "\n")
    assert read_pairs(bare)[0].pair_id == make_pair_id("Hi", " x", " y")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "response_a": "x"}, "bad.jsonl:2: field 'response_b': missing"),
    ({"prompt": "p", "response_a": "x", "response_b": "x"}, "two different, non-blank"),
    ({"prompt": "p", "response_a": "x", "response_b": "  "}, "two different, non-blank"),
    ({"prompt": 3, "response_a": "x", "response_b": "y"}, "field 'prompt': expected a string"),
    ({"prompt": "p", "response_a": "a", "response_b": "b"}, "the same pair as row 1"),
])
def test_bad_pairs_rows_name_the_line_and_field(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    first = {"prompt": "p", "response_a": "a", "response_b": "b"}
    path.write_text(json.dumps(first) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        read_pairs(path)


# ---------------------------------------------------------------------------- the store

def test_one_annotator_labels_everything_in_order_into_two_files(tmp_path):
    pairs, out = make_pairs(4), tmp_path / "prefs.jsonl"
    store = JudgementStore(pairs, out)
    seen = []
    for label in ["a", "b", "tie", "skip"]:
        shown = store.next_pair("ana")["pair"]
        seen.append(shown["pair_id"])
        answer = store.judge("ana", shown["pair_id"], label, shown["left_is"])
        assert answer["status"] == "recorded"
    assert seen == [p.pair_id for p in pairs]
    assert answer["pair"] is None and answer["done"]
    assert answer["progress"] == {"labelled": 3, "total": 4, "overlap": 1, "yours": 3,
                                  "skipped": 1, "can_undo": True}
    prefs, others = lines(out), lines(side_files(out)[0])
    assert [r["chosen"] for r in prefs] == [" answer A0", " answer B1"]
    assert [r["rejected"] for r in prefs] == [" answer B0", " answer A1"]
    assert [r["label"] for r in others] == ["tie", "skip"]
    assert {r["annotator"] for r in prefs + others} == {"ana"}
    assert all(r["time"].endswith("Z") for r in prefs + others)
    loaded = load_preferences(out)   # exactly what `rlhfkit reward` reads
    assert [(p.prompt, p.chosen) for p in loaded] == [("Prompt 0:", " answer A0"),
                                                      ("Prompt 1:", " answer B1")]


def test_the_left_response_is_drawn_at_random_and_kept_per_pair(tmp_path):
    store = JudgementStore(make_pairs(40), tmp_path / "prefs.jsonl")
    sides = []
    for _ in range(40):
        shown = store.next_pair("ana")["pair"]
        assert store.next_pair("ana")["pair"] == shown   # asking again: the same pair, same sides
        pair = store.pairs[shown["pair_id"]]
        expected = (pair.response_a, pair.response_b) if shown["left_is"] == "a" else \
            (pair.response_b, pair.response_a)
        assert (shown["left"], shown["right"]) == expected
        sides.append(shown["left_is"])
        store.judge("ana", shown["pair_id"], "a", shown["left_is"])
    assert 5 < sides.count("a") < 35


def test_two_annotators_never_get_the_same_pair_without_overlap(tmp_path):
    store = JudgementStore(make_pairs(6), tmp_path / "prefs.jsonl")
    judged = {"ana": [], "bob": []}
    for _ in range(3):
        a, b = store.next_pair("ana")["pair"], store.next_pair("bob")["pair"]
        assert a["pair_id"] != b["pair_id"]
        for name, shown in (("ana", a), ("bob", b)):
            answer = store.judge(name, shown["pair_id"], "a", shown["left_is"])
            assert answer["status"] == "recorded"
            judged[name].append(shown["pair_id"])
    assert not set(judged["ana"]) & set(judged["bob"])
    assert store.next_pair("ana")["done"] and store.progress()["labelled"] == 6
    assert len({r["pair_id"] for r in lines(tmp_path / "prefs.jsonl")}) == 6


def test_overlap_gives_each_pair_to_k_different_annotators(tmp_path):
    store = JudgementStore(make_pairs(3), tmp_path / "prefs.jsonl", overlap=2)
    for name in ("ana", "bob", "cyd"):
        while (shown := store.next_pair(name)["pair"]) is not None:
            store.judge(name, shown["pair_id"], "b", shown["left_is"])
    rows = lines(tmp_path / "prefs.jsonl")
    per_pair = {}
    for row in rows:
        per_pair.setdefault(row["pair_id"], []).append(row["annotator"])
    assert sorted(len(set(v)) for v in per_pair.values()) == [2, 2, 2]
    assert len(rows) == 6 and [r["annotator"] for r in rows].count("cyd") == 0
    assert store.progress() == {"labelled": 6, "total": 6, "overlap": 2, "yours": 0,
                                "skipped": 0, "can_undo": False}


def test_an_expired_lease_frees_the_pair_and_a_late_judgement_is_not_written(tmp_path):
    clock = Clock()
    store = JudgementStore(make_pairs(2), tmp_path / "prefs.jsonl", lease_seconds=60, clock=clock)
    held = store.next_pair("ana")["pair"]
    assert store.next_pair("bob")["pair"]["pair_id"] != held["pair_id"]
    store.judge("bob", store.next_pair("bob")["pair"]["pair_id"], "a", "a")
    assert store.next_pair("bob")["pair"] is None and not store.next_pair("bob")["done"]  # waiting
    clock.now = 61.0                                     # ana went for lunch
    taken = store.next_pair("bob")["pair"]
    assert taken["pair_id"] == held["pair_id"]
    store.judge("bob", taken["pair_id"], "b", taken["left_is"])
    late = store.judge("ana", held["pair_id"], "a", held["left_is"])
    assert late["status"] == "taken" and late["done"]
    assert [r["annotator"] for r in lines(tmp_path / "prefs.jsonl")] == ["bob", "bob"]


def test_a_repeated_judgement_is_written_once(tmp_path):
    store = JudgementStore(make_pairs(2), tmp_path / "prefs.jsonl")
    shown = store.next_pair("ana")["pair"]
    assert store.judge("ana", shown["pair_id"], "a", "a")["status"] == "recorded"
    again = store.judge("ana", shown["pair_id"], "a", "a")
    assert again["status"] == "duplicate" and again["pair"]["pair_id"] != shown["pair_id"]
    assert len(lines(tmp_path / "prefs.jsonl")) == 1
    with pytest.raises(UnknownPair):
        store.judge("ana", "0" * 16, "a", "a")


def test_undo_removes_the_annotators_last_judgement_and_shows_the_pair_again(tmp_path):
    out = tmp_path / "prefs.jsonl"
    store = JudgementStore(make_pairs(4), out)
    assert store.undo("ana")["status"] == "nothing to undo"
    first = store.next_pair("ana")["pair"]
    store.judge("ana", first["pair_id"], "a", first["left_is"])
    second = store.next_pair("ana")["pair"]
    store.judge("ana", second["pair_id"], "tie", second["left_is"])
    bobs = store.next_pair("bob")["pair"]
    store.judge("bob", bobs["pair_id"], "b", bobs["left_is"])      # written after ana's
    undone = store.undo("ana")
    assert undone["status"] == "undone" and undone["pair"] == second   # same sides as before
    assert lines(side_files(out)[0]) == []
    assert store.undo("ana")["pair"] == first                       # a second undo goes further
    assert [r["annotator"] for r in lines(out)] == ["bob"]
    store.judge("ana", first["pair_id"], "b", first["left_is"])
    assert [r["label"] for r in lines(out)] == ["b", "b"]


def test_a_new_store_on_the_same_files_resumes_where_labelling_stopped(tmp_path):
    pairs, out = make_pairs(5), tmp_path / "prefs.jsonl"
    store = JudgementStore(pairs, out)
    for label in ("a", "skip", "b"):
        shown = store.next_pair("ana")["pair"]
        store.judge("ana", shown["pair_id"], label, shown["left_is"])
    resumed = JudgementStore(pairs, out)                           # a restarted server
    answer = resumed.next_pair("ana")
    assert answer["pair"]["pair_id"] == pairs[3].pair_id
    assert answer["progress"]["labelled"] == 2 and answer["progress"]["skipped"] == 1
    assert resumed.next_pair("bob")["pair"]["pair_id"] == pairs[1].pair_id   # ana skipped it
    assert resumed.undo("ana")["pair"]["pair_id"] == pairs[2].pair_id        # undo survives too


def test_after_a_restart_each_open_page_claims_back_the_pair_it_shows(tmp_path):
    pairs, out = make_pairs(4), tmp_path / "prefs.jsonl"
    store = JudgementStore(pairs, out)
    ana, bob = store.next_pair("ana")["pair"], store.next_pair("bob")["pair"]
    restarted = JudgementStore(pairs, out)                         # every lease forgotten
    assert restarted.next_pair("bob", bob["pair_id"], bob["left_is"])["pair"] == bob
    assert restarted.next_pair("ana", ana["pair_id"], ana["left_is"])["pair"] == ana
    cyd = restarted.next_pair("cyd")["pair"]
    assert cyd["pair_id"] not in (ana["pair_id"], bob["pair_id"])
    assert restarted.next_pair("cyd", ana["pair_id"], "a")["pair"] == cyd   # held by ana
    restarted.judge("ana", ana["pair_id"], "a", ana["left_is"])
    assert restarted.next_pair("ana", ana["pair_id"], "a")["pair"]["pair_id"] != ana["pair_id"]


def test_an_out_file_of_another_format_is_refused_in_one_line(tmp_path):
    out = tmp_path / "prefs.jsonl"
    out.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError) as err:
        JudgementStore(make_pairs(1), out)
    message = str(err.value)
    assert "prefs.jsonl:1: field 'pair_id'" in message and "not a judgements file" in message
    assert "\n" not in message
    out.write_text("not json\n")
    with pytest.raises(DataError, match="prefs.jsonl:1: invalid JSON"):
        read_judgements(out, "prefs")


def test_a_last_line_cut_short_is_dropped_and_the_file_repaired(tmp_path):
    pairs, out = make_pairs(3), tmp_path / "prefs.jsonl"
    store = JudgementStore(pairs, out)
    shown = store.next_pair("ana")["pair"]
    store.judge("ana", shown["pair_id"], "a", "a")
    with open(out, "a") as f:
        f.write('{"prompt": "Prompt 1:", "cho')                   # power cut mid-write
    resumed = JudgementStore(pairs, out)
    shown = resumed.next_pair("ana")["pair"]
    assert shown["pair_id"] == pairs[1].pair_id
    resumed.judge("ana", shown["pair_id"], "b", "a")
    assert [r["label"] for r in lines(out)] == ["a", "b"]


# ---------------------------------------------------------------------------- statistics

def test_krippendorff_alpha_on_hand_computed_cases():
    # o[a][a] = 2, o[b][b] = 2, o[a][b] = o[b][a] = 1; n_a = n_b = 3, n = 6:
    # D_o = 2/6, D_e = 2·3·3 / (6·5) = 0.6, alpha = 1 − (1/3)/0.6 = 4/9
    assert krippendorff_alpha([["a", "a"], ["b", "b"], ["a", "b"]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha([["a", "a"], ["b", "b"], ["tie", "tie"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["a", "b"], ["b", "a"]]) < 0   # systematic disagreement
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None   # one label: undefined
    assert krippendorff_alpha([["a"], ["b"]]) is None


def test_label_stats_counts_position_bias_and_agreement():
    def row(pair, name, label, left):
        return {"pair_id": pair, "annotator": name, "label": label, "left": left}
    prefs = [row("p1", "ana", "a", "a"), row("p1", "bob", "a", "b"),
             row("p2", "ana", "b", "b"), row("p2", "bob", "a", "a"),
             row("p3", "ana", "a", "a")]
    others = [row("p3", "bob", "tie", "a"), row("p4", "bob", "skip", "a")]
    stats = label_stats(prefs, others, total_pairs=5)
    assert (stats["preferences"], stats["ties"], stats["skips"]) == (5, 1, 1)
    assert stats["pairs_judged"] == 3 and stats["pairs_total"] == 5
    assert stats["annotators"]["ana"] == {"preferences": 3, "ties": 0, "skips": 0,
                                          "left_share": 1.0, "agreement_with_others": 0.333}
    assert stats["annotators"]["bob"]["left_share"] == 0.5
    assert stats["agreement"]["pairs_with_2_or_more"] == 3
    assert stats["agreement"]["pairwise"] == 0.333
    alpha = krippendorff_alpha([["a", "a"], ["b", "a"], ["a", "tie"]])
    assert stats["agreement"]["krippendorff_alpha"] == round(alpha, 4)


# ---------------------------------------------------------------------------- options

@pytest.mark.parametrize("overrides, message", [
    (["out=p.jsonl"], "give pairs=FILE"),
    (["out=p.jsonl", "model=m"], "give pairs=FILE"),
    (["out=p.jsonl", "pairs=x.jsonl", "model=m"], "not both"),
    (["out=p.jsonl", "pairs=x.jsonl", "token=short"], "token: at least 8"),
    (["out=p.jsonl", "pairs=x.jsonl", "port=70000"], "port: must be <= 65535"),
])
def test_label_options_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LabelConfig, None, overrides)
    assert load_config(LabelConfig, None, ["out=p.jsonl", "stats=true"]).stats


def test_a_port_in_use_is_one_clear_line_and_tokens_guard_every_non_loopback_host():
    sock, loopback = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert loopback
        with pytest.raises(RlhfkitError, match=f"port {port} on 127.0.0.1 is in use"):
            bind("127.0.0.1", port)
    finally:
        sock.close()
    assert access_token(None, loopback=True) is None
    assert len(access_token(None, loopback=False)) >= 16
    assert access_token("my-token-1", loopback=True) == "my-token-1"
    sock, loopback = bind("localhost", 0)
    with sock:
        port = sock.getsockname()[1]
        assert loopback and page_url("localhost", sock, None) in (
            f"http://127.0.0.1:{port}/", f"http://[::1]:{port}/")
        wildcard = f"http://{socket.gethostname()}:{port}/?token=tok"
        assert page_url("0.0.0.0", sock, "tok") == wildcard
