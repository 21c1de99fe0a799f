"""Counts and inter-annotator agreement of a labelling session (`rlhfkit label stats=true`).

Agreement is measured on the pairs judged by two or more annotators (ask for them with
`overlap=K`), over the labels a, b and tie (a skip is no opinion):

    pairwise agreement   the share of (annotator, annotator) comparisons on the same pair
                         that gave the same label
    Krippendorff's α     1 − D_o / D_e, nominal: observed disagreement over the disagreement
                         expected by chance from how often each label is used. 1 is perfect
                         agreement, 0 chance level; it handles any number of annotators per
                         pair (Krippendorff 2011, "Computing Krippendorff's alpha-reliability")

`left share` is, per annotator, how often the preferred response was the one shown on the
left: far from 0.5 over many pairs, it is a position bias, not a preference.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

__all__ = ["label_stats", "krippendorff_alpha", "format_stats"]


def krippendorff_alpha(units: Sequence[Sequence[str]]) -> float | None:
    """Nominal Krippendorff's α of `units`, each the labels its annotators gave.

    Units with fewer than two labels carry no information and are left out. From the
    coincidence matrix o[c][k] = Σ_units (number of ordered label pairs (c, k) from
    different annotators) / (m_u − 1), with n_c = Σ_k o[c][k] and n = Σ_c n_c:
        D_o = Σ_{c≠k} o[c][k] / n,   D_e = Σ_{c≠k} n_c n_k / (n (n − 1)),
        α = 1 − D_o / D_e
    None when it is undefined: no unit with two labels, or only one label used at all.
    """
    coincidences: Counter = Counter()
    for labels in units:
        m = len(labels)
        if m < 2:
            continue
        for i, j in itertools.permutations(range(m), 2):
            coincidences[labels[i], labels[j]] += 1.0 / (m - 1)
    totals: Counter = Counter()
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    if n < 2:
        return None
    observed = sum(w for (c, k), w in coincidences.items() if c != k) / n
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


def label_stats(prefs: Sequence[Mapping], others: Sequence[Mapping],
                total_pairs: int | None = None) -> dict:
    """Counts per annotator and in all, position bias and agreement, from the rows of the
    two judgements files (see `rlhfkit.label.store`)."""
    per_pair: dict[str, dict[str, str]] = defaultdict(dict)
    people: dict[str, Counter] = defaultdict(Counter)
    for row in [*prefs, *others]:
        label, name = row["label"], row["annotator"]
        people[name][label] += 1
        if label in ("a", "b") and row["left"] == label:
            people[name]["left"] += 1
        if label != "skip":
            per_pair[row["pair_id"]][name] = label
    shared = {p: by for p, by in per_pair.items() if len(by) >= 2}
    agree, compared = _agreement_counts(shared)
    annotators = {}
    for name, counts in sorted(people.items()):
        preferences = counts["a"] + counts["b"]
        annotators[name] = {
            "preferences": preferences, "ties": counts["tie"], "skips": counts["skip"],
            "left_share": round(counts["left"] / preferences, 3) if preferences else None,
            "agreement_with_others": _ratio(agree[name], compared[name])}
    pairwise = _ratio(agree[None], compared[None])
    alpha = krippendorff_alpha([list(by.values()) for by in shared.values()])
    return {
        "preferences": len(prefs), "ties": sum(r["label"] == "tie" for r in others),
        "skips": sum(r["label"] == "skip" for r in others),
        "pairs_judged": len(per_pair), "pairs_total": total_pairs,
        "annotators": annotators,
        "agreement": {"pairs_with_2_or_more": len(shared), "pairwise": pairwise,
                      "krippendorff_alpha": None if alpha is None else round(alpha, 4)}}


def _agreement_counts(shared: Mapping[str, Mapping[str, str]]) -> tuple[Counter, Counter]:
    """(agreeing, compared) annotator pairs, per annotator and in all (key None)."""
    agree, compared = Counter(), Counter()
    for by in shared.values():
        for (x, lx), (y, ly) in itertools.combinations(sorted(by.items()), 2):
            same = int(lx == ly)
            for key in (x, y, None):
                agree[key] += same
                compared[key] += 1
    return agree, compared


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 3) if den else None


def format_stats(stats: Mapping, out: str) -> str:
    """The stats as a few aligned lines for the terminal."""
    total = stats["pairs_total"]
    lines = [f"{out}: {stats['preferences']} preferences, {stats['ties']} ties, "
             f"{stats['skips']} skips; {stats['pairs_judged']} pairs judged"
             + (f" of {total}" if total is not None else "")]
    if stats["annotators"]:
        width = max(9, *(len(n) for n in stats["annotators"]))
        lines.append(f"{'annotator':<{width}}  {'prefs':>5}  {'ties':>4}  {'skips':>5}  "
                     f"{'left share':>10}  {'agrees with others':>18}")
        for name, a in stats["annotators"].items():
            lines.append(f"{name:<{width}}  {a['preferences']:>5}  {a['ties']:>4}  "
                         f"{a['skips']:>5}  {_show(a['left_share']):>10}  "
                         f"{_show(a['agreement_with_others']):>18}")
    agreement = stats["agreement"]
    if agreement["pairs_with_2_or_more"]:
        lines.append(f"agreement on {agreement['pairs_with_2_or_more']} pairs judged by 2 or "
                     f"more annotators: pairwise {_show(agreement['pairwise'])}, "
                     f"Krippendorff's alpha {_show(agreement['krippendorff_alpha'])}")
    else:
        lines.append("agreement: no pair was judged by two annotators (label with overlap=2 "
                     "or more to measure it)")
    return "\n".join(lines)


def _show(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
