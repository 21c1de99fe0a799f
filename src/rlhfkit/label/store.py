"""Every judgement of a labelling session: who gets which pair, and the files on disk.

Two append-only JSON Lines files, both written before the page is given its next pair:

    OUT                        preferences, in the format `rlhfkit reward` reads:
        {"prompt": ..., "chosen": ..., "rejected": ..., "pair_id": "3f2a...", "label": "b",
         "left": "a", "annotator": "ana", "time": "2026-01-31T12:00:00.123456Z"}
    OUT.stem + .ties_skips.jsonl   ties and skips, kept apart so OUT trains a reward model
        {"prompt": ..., "response_a": ..., "response_b": ..., "pair_id": ..., "label": "tie",
         "left": "b", "annotator": ..., "time": ...}

`label` is what the annotator decided in the pair's own terms (a, b, tie, skip), `left` which
response the page showed on the left (for measuring position bias). Each line is written,
flushed and fsync'ed in one call, so a killed server loses nothing it has answered; on a
restart both files are read back and labelling resumes where it stopped. Undo is the one
operation that rewrites a file, atomically (a temporary file, then rename).

Who gets which pair: each pair wants `overlap` judgements (a, b or tie) from as many
different annotators; a skip removes the pair for that annotator only. A pair shown to an
annotator is leased to them for `lease_seconds`, so two people labelling at once never get
the same pair unless overlap > 1. Leases live in memory: after a restart the page simply
sends its pending judgement again, a judgement that was already written is recognised by
its (pair, annotator) and not written twice, and a page that is only showing a pair claims
it back with its next request (pages ask every 30 s, which also keeps their lease alive).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.label.pairs import Pair

__all__ = ["JudgementStore", "UnknownPair", "read_judgements", "side_files", "LABELS"]

PREFERENCE_LABELS = ("a", "b")
OTHER_LABELS = ("tie", "skip")
LABELS = PREFERENCE_LABELS + OTHER_LABELS
_COMMON = ("pair_id", "label", "left", "annotator", "time", "prompt")
_TEXT_FIELDS = {"prefs": ("chosen", "rejected"), "others": ("response_a", "response_b")}
_FORMAT_HINT = "not a judgements file of rlhfkit label; pass another out= file"


class UnknownPair(RlhfkitError):
    """A judgement names a pair that is not in this session's pairs."""


def side_files(out: str | os.PathLike) -> tuple[Path, Path]:
    """(ties and skips file, cached sampled pairs file) beside `out`:
    prefs.jsonl -> prefs.ties_skips.jsonl, prefs.pairs.jsonl."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.ties_skips.jsonl"), out.with_name(f"{stem}.pairs.jsonl")


def utc_now() -> str:
    """ISO 8601 UTC with microseconds: sorts as text in the order the judgements were made."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------- reading

def read_judgements(path: str | os.PathLike, kind: str) -> list[dict]:
    """The rows of a judgements file (`kind` "prefs" or "others"), checked; [] when absent.

    A last line cut short (no newline, not JSON: a write interrupted by a power cut) is
    left out; anything else that is not a judgement is a one-line DataError.
    """
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise DataError(path, None, None, "not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(path, None, None, f"not UTF-8 text: {_FORMAT_HINT}") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):   # the last line, without its newline: cut short
                break
            raise DataError(path, number, None, f"invalid JSON ({err.msg}): {_FORMAT_HINT}") \
                from None
        rows.append(_check_row(path, number, row, kind))
    return rows


def _check_row(path: Path, number: int, row, kind: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(path, number, None, f"expected a JSON object: {_FORMAT_HINT}")
    for field in _COMMON + _TEXT_FIELDS[kind]:
        if not isinstance(row.get(field), str):
            present = ", ".join(sorted(row)) or "nothing"
            raise DataError(path, number, field, f"missing or not a string (the row has: "
                            f"{present}): {_FORMAT_HINT}")
    allowed = PREFERENCE_LABELS if kind == "prefs" else OTHER_LABELS
    if row["label"] not in allowed or row["left"] not in PREFERENCE_LABELS:
        raise DataError(path, number, "label", f"expected label in {', '.join(allowed)} and "
                        f"left in a, b: {_FORMAT_HINT}")
    return row


# ---------------------------------------------------------------------------- the store

@dataclass
class Lease:
    """A pair shown to one annotator, reserved for them until `expires` (clock seconds)."""
    pair_id: str
    left: str
    expires: float


class JudgementStore:
    """The pairs, the judgements made so far (read back from disk), and the leases.

    Every public method takes the lock, so the store is safe to call from any thread.
    Answers are plain dicts, ready to be sent as JSON:
        {"status": ..., "pair": {...} | None, "done": bool, "progress": {...}}
    """

    def __init__(self, pairs: list[Pair], out: str | os.PathLike, overlap: int = 1,
                 lease_seconds: float = 900.0, rng: random.Random | None = None,
                 clock=time.monotonic):
        self.pairs = {p.pair_id: p for p in pairs}
        self.order = [p.pair_id for p in pairs]
        self.paths = {"prefs": Path(out), "others": side_files(out)[0]}
        self.overlap, self.lease_seconds = overlap, lease_seconds
        self._rng, self._clock = rng or random.Random(), clock
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._rows = {kind: read_judgements(path, kind) for kind, path in self.paths.items()}
        for kind, path in self.paths.items():
            _repair_ending(path, self._rows[kind])
        self._index_rows()

    def _index_rows(self) -> None:
        """labels[pair_id][annotator] and each annotator's judgements in time order."""
        self._labels: dict[str, dict[str, str]] = {}
        self._history: dict[str, list[tuple[str, dict]]] = {}
        tagged = [(row["time"], kind, row) for kind in self.paths for row in self._rows[kind]]
        for _, kind, row in sorted(tagged, key=lambda t: t[0]):
            by_annotator = self._labels.setdefault(row["pair_id"], {})
            if row["annotator"] in by_annotator:
                raise DataError(self.paths[kind], None, "pair_id", f"pair {row['pair_id']} "
                                f"judged twice by {row['annotator']!r}; keep one of the lines")
            by_annotator[row["annotator"]] = row["label"]
            if row["pair_id"] in self.pairs:   # undo reaches only this session's pairs
                self._history.setdefault(row["annotator"], []).append((kind, row))

    # -------------------------------------------------------------- the three actions

    def next_pair(self, annotator: str, showing: str | None = None,
                  left: str | None = None) -> dict:
        """The pair this annotator should judge now: the one their page is `showing` (with
        `left` on the left) while it is still open to them, else the one they hold, else a
        fresh one. Pages say what they show, so that after a restart, which forgets every
        lease, each open page claims its pair back before anyone else is given it."""
        with self._lock:
            claim = (showing, left) if showing in self.pairs and left in PREFERENCE_LABELS \
                else None
            return self._answer(annotator, "ok", claim)

    def judge(self, annotator: str, pair_id: str, label: str, left: str) -> dict:
        """Record a judgement (on disk first), then answer with the annotator's next pair.

        Sent twice (a retry after a lost answer, a double click) it is written once:
        status "duplicate". A pair that meanwhile got its `overlap` judgements from others
        (a lease that expired) is not written: status "taken".
        """
        if label not in LABELS or left not in PREFERENCE_LABELS:
            raise ValueError(f"bad label {label!r} or left {left!r}")
        with self._lock:
            pair = self.pairs.get(pair_id)
            if pair is None:
                raise UnknownPair(f"no pair with id {pair_id!r} in this session")
            labels = self._labels.get(pair_id, {})
            if annotator in labels:
                status = "duplicate"
            elif label != "skip" and self._counted(pair_id) >= self.overlap:
                status = "taken"
            else:
                self._append(pair, annotator, label, left)
                status = "recorded"
            lease = self._leases.get(annotator)
            if lease is not None and lease.pair_id == pair_id:
                del self._leases[annotator]
            return self._answer(annotator, status)

    def undo(self, annotator: str) -> dict:
        """Take back this annotator's latest judgement and show them that pair again."""
        with self._lock:
            history = self._history.get(annotator)
            if not history:
                return self._answer(annotator, "nothing to undo")
            kind, row = history.pop()
            self._rows[kind] = [r for r in self._rows[kind] if r is not row]
            _rewrite(self.paths[kind], self._rows[kind])
            del self._labels[row["pair_id"]][annotator]
            expires = self._clock() + self.lease_seconds
            self._leases[annotator] = Lease(row["pair_id"], row["left"], expires)
            return self._answer(annotator, "undone")

    def progress(self, annotator: str | None = None) -> dict:
        """labelled / total judgements wanted, and this annotator's own counts."""
        with self._lock:
            return self._progress(annotator)

    # -------------------------------------------------------------- inside the lock

    def _counted(self, pair_id: str) -> int:
        """Judgements of a pair that count towards `overlap` (skips do not)."""
        return sum(label != "skip" for label in self._labels.get(pair_id, {}).values())

    def _held_by_others(self, annotator: str) -> Counter:
        now = self._clock()
        return Counter(lease.pair_id for name, lease in self._leases.items()
                       if name != annotator and lease.expires > now)

    def _assign(self, annotator: str, claim: tuple[str, str] | None = None) -> Lease | None:
        """Lease the claimed pair if it is open to them, else keep the annotator's live
        lease, else lease them the first pair open to them."""
        now, held = self._clock(), self._held_by_others(annotator)
        if claim is not None:
            pair_id, left = claim
            if annotator not in self._labels.get(pair_id, {}) and \
                    self._counted(pair_id) + held[pair_id] < self.overlap:
                self._leases[annotator] = Lease(pair_id, left, now + self.lease_seconds)
                return self._leases[annotator]
        lease = self._leases.pop(annotator, None)
        if lease is not None and lease.expires > now and annotator not in \
                self._labels.get(lease.pair_id, {}) and self._counted(lease.pair_id) < self.overlap:
            lease.expires = now + self.lease_seconds
            self._leases[annotator] = lease
            return lease
        for pair_id in self.order:
            if annotator in self._labels.get(pair_id, {}):
                continue
            if self._counted(pair_id) + held[pair_id] < self.overlap:
                left = self._rng.choice(PREFERENCE_LABELS)
                lease = Lease(pair_id, left, now + self.lease_seconds)
                self._leases[annotator] = lease
                return lease
        return None

    def _answer(self, annotator: str, status: str,
                claim: tuple[str, str] | None = None) -> dict:
        lease = self._assign(annotator, claim)
        done = lease is None and all(
            annotator in self._labels.get(p, {}) or self._counted(p) >= self.overlap
            for p in self.order)
        return {"status": status, "pair": self._shown(lease), "done": done,
                "progress": self._progress(annotator)}

    def _shown(self, lease: Lease | None) -> dict | None:
        """The pair as the page shows it: which response is left was drawn at random."""
        if lease is None:
            return None
        pair = self.pairs[lease.pair_id]
        a, b = pair.response_a, pair.response_b
        left, right = (a, b) if lease.left == "a" else (b, a)
        return {"pair_id": pair.pair_id, "prompt": pair.prompt, "left": left, "right": right,
                "left_is": lease.left}

    def _progress(self, annotator: str | None) -> dict:
        mine = [self._labels.get(p, {}).get(annotator) for p in self.order] if annotator else []
        return {"labelled": sum(min(self._counted(p), self.overlap) for p in self.order),
                "total": len(self.order) * self.overlap, "overlap": self.overlap,
                "yours": sum(label in ("a", "b", "tie") for label in mine),
                "skipped": mine.count("skip"),
                "can_undo": bool(annotator and self._history.get(annotator))}

    def _append(self, pair: Pair, annotator: str, label: str, left: str) -> None:
        """Write one judgement line (flushed and fsync'ed), then remember it."""
        if label in PREFERENCE_LABELS:
            chosen, rejected = ((pair.response_a, pair.response_b) if label == "a"
                                else (pair.response_b, pair.response_a))
            kind, texts = "prefs", {"chosen": chosen, "rejected": rejected}
        else:
            kind, texts = "others", {"response_a": pair.response_a, "response_b": pair.response_b}
        row = {"prompt": pair.prompt, **texts, "pair_id": pair.pair_id, "label": label,
               "left": left, "annotator": annotator, "time": utc_now()}
        path = self.paths[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._rows[kind].append(row)
        self._labels.setdefault(pair.pair_id, {})[annotator] = label
        self._history.setdefault(annotator, []).append((kind, row))


# ---------------------------------------------------------------------------- writing

def _repair_ending(path: Path, rows: list[dict]) -> None:
    """After a cut-short last line, write the file back whole, so the next append starts
    on a line of its own."""
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        _rewrite(path, rows)


def _rewrite(path: Path, rows: list[dict]) -> None:
    """Replace `path` by `rows`, atomically: a crash leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
