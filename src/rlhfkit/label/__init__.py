"""The human in RLHF: collect preference pairs from people, in a local web page.

    rlhfkit sample-pairs model=runs/sft/model prompts=prompts.jsonl out=pairs.jsonl
    rlhfkit label pairs=pairs.jsonl out=prefs.jsonl          # or model=... prompts=...
    rlhfkit label stats=true out=prefs.jsonl                 # counts and agreement
    rlhfkit reward model=runs/sft/model data=prefs.jsonl out=runs/rm

    pairs.py    Pair; sampling two responses per prompt from a model; pairs files
    store.py    JudgementStore: who gets which pair, every judgement appended and flushed
                to disk before the next pair is handed out, undo, resume after a restart
    stats.py    counts per annotator, position bias, inter-annotator agreement
    page.py     the one HTML page (inline CSS and JS, no external assets)
    server.py   the Starlette app: the page and a small JSON API with validated bodies
    command.py  `rlhfkit label`: options, safe binding (loopback, or a token), uvicorn

Imports stay light (no torch, no transformers) unless pairs are sampled from a model, so
labelling from a prepared pairs file starts in a fraction of a second.
"""

from rlhfkit.label.pairs import Pair, make_pair_id, read_pairs, write_pairs
from rlhfkit.label.stats import krippendorff_alpha, label_stats
from rlhfkit.label.store import JudgementStore, read_judgements, side_files

__all__ = ["Pair", "make_pair_id", "read_pairs", "write_pairs", "JudgementStore",
           "read_judgements", "side_files", "label_stats", "krippendorff_alpha"]
