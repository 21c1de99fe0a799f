"""Token-level views of a trajectory: the lecture's picture of GAE on a real sample.

A response is drawn four times, one row per quantity, each token a chip coloured by it:

    reward     r_t = −β·KL_t on every token, plus the score at the last one
    value      V(s_t), the critic's estimate of the return from token t on
    advantage  A_t from GAE: how much better token t turned out than the critic expected
    KL         the per-token KL estimate to the reference: where the policy has drifted

Blue is positive, red negative, white zero (a diverging map). Each row has its own scale,
because the four quantities live on different scales; colour intensity is √(|x| / row max)
so that small per-token KL penalties stay visible beside the end-of-sequence score. Hovering
a chip shows the exact number (its title attribute): no JavaScript needed.

Identical chips wrap identically, so the four rows stay aligned token for token.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Mapping, Sequence

__all__ = ["token_view_html", "readable_token", "token_colour", "QUANTITIES"]

# (sample key, row label, what the row shows)
QUANTITIES = (
    ("rewards", "reward", "−β·KL on every token, plus the score at the last token"),
    ("values", "value", "V(s_t): the critic's estimate of the return from this token on"),
    ("advantages", "advantage", "GAE: better (blue) or worse (red) than the critic expected"),
    ("token_kl", "KL", "log π_old − log π_ref: how far the policy drifted on this token"),
)
POSITIVE = (33, 102, 172)    # RdBu's blue
NEGATIVE = (178, 24, 43)     # RdBu's red
MISSING = "#d9d9d9"          # non-finite or absent numbers: grey, never a colour of the scale
MAX_PROMPT_CHARS = 300


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet -> byte: printable stand-ins for the 256 byte values
    (Ġ for a space, Ċ for a newline), as in `bytes_to_unicode` of the GPT-2 tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = dict((b, b) for b in printable), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {chr(c): b for b, c in chars.items()}


def readable_token(token: str) -> str:
    """The text a tokenizer's token stands for: "Ġgood" -> " good", "Ċ" -> "\\n",
    SentencePiece "▁good" -> " good", "<0x0A>" -> "\\n". Special tokens pass unchanged.

    A byte-level token holding part of a multi-byte character decodes to "�": the character
    really is split across tokens.
    """
    decoder = _byte_decoder()
    if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
        try:
            return bytes([int(token[3:5], 16)]).decode("utf-8", errors="replace")
        except ValueError:
            return token
    if "▁" in token or not all(c in decoder for c in token):
        return token.replace("▁", " ")
    return bytes(decoder[c] for c in token).decode("utf-8", errors="replace")


def _chip_text(text: str) -> str:
    """Escaped token text with whitespace made visible (a faint · for a space, ↵, ⇥)."""
    out = html.escape(text, quote=True)
    out = out.replace(" ", '<span class="sp">·</span>')
    return out.replace("\n", "↵").replace("\t", "⇥").replace("\r", "") or "∅"


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) + 0.0 if ok else None   # + 0.0: no "-0" on hover


def token_colour(value, scale: float) -> tuple[str, str]:
    """(background, text colour) of a chip: white at 0, blue > 0, red < 0, saturated at
    |value| = scale; grey when value is not a finite number."""
    x = _number(value)
    if x is None:
        return MISSING, "#000"
    strength = min(abs(x) / scale, 1.0) ** 0.5 if scale > 0 else 0.0
    base = POSITIVE if x > 0 else NEGATIVE
    rgb = [round(255 + (c - 255) * strength) for c in base]
    return "#{:02x}{:02x}{:02x}".format(*rgb), ("#fff" if strength > 0.6 else "#000")


def _row_html(tokens: Sequence[str], values: Sequence, label: str) -> str:
    finite = [v for v in map(_number, values) if v is not None]
    scale = max((abs(v) for v in finite), default=0.0)
    chips = []
    for i, token in enumerate(tokens):
        value = values[i] if i < len(values) else None
        background, ink = token_colour(value, scale)
        x = _number(value)
        shown = f"{x:+.4g}" if x is not None else "n/a"
        title = html.escape(f"{label} of token {i} {readable_token(token)!r}: {shown}", quote=True)
        chips.append(f'<span class="chip" style="background:{background};color:{ink}" '
                     f'title="{title}">{_chip_text(readable_token(token))}</span>')
    return f'<div class="tv-scale">±{scale:.3g}</div><div class="tv-row">{"".join(chips)}</div>'


def _legend() -> str:
    bar = f"linear-gradient(to right, rgb{NEGATIVE}, #ffffff, rgb{POSITIVE})"
    return ('<div class="tv-legend"><span>−</span><span class="tv-bar" '
            f'style="background:{bar}"></span><span>+</span> white = 0; each row scaled to its '
            "own largest |value| (shown left), intensity ∝ √(|x|/max); hover a token for its "
            "number. · marks a space.</div>")


def token_view_html(sample: Mapping, heading: str | None = None) -> str:
    """One sample of `samples.jsonl` as four rows of coloured token chips (see the module
    docstring). `sample` needs "tokens"; "rewards", "values", "advantages", "token_kl" may be
    absent or null (a critic-free run has no values). Every text is HTML-escaped."""
    tokens = [str(t) for t in sample.get("tokens") or []]
    prompt = str(sample.get("prompt", ""))
    if len(prompt) > MAX_PROMPT_CHARS:
        prompt = "…" + prompt[-MAX_PROMPT_CHARS:]
    facts = [f"{name} {_number(sample.get(key)):+.4g}" for key, name in
             (("score", "score"), ("kl", "KL")) if _number(sample.get(key)) is not None]
    parts = ['<div class="tokview">']
    if heading:
        parts.append(f'<div class="tv-head">{html.escape(heading)}</div>')
    facts_html = f'<span class="tv-facts">{html.escape(" · ".join(facts))}</span>' if facts else ""
    parts.append(f'<div class="tv-prompt"><b>prompt</b> {html.escape(prompt)}{facts_html}</div>')
    parts.append('<div class="tv-grid">')
    for key, label, meaning in QUANTITIES:
        values = sample.get(key)
        parts.append(f'<div class="tv-label" title="{html.escape(meaning, quote=True)}">{label}</div>')
        if values is None:
            why = "no value function in this run (critic-free)" if key == "values" else "not logged"
            parts.append(f'<div></div><div class="tv-row tv-none">{why}</div>')
        else:
            parts.append(_row_html(tokens, list(values), label))
    parts.append("</div>" + _legend() + "</div>")
    return "\n".join(parts)
