"""PNG figures of a run's training signals, and the proxy-vs-gold-vs-KL view of Gao et al.

    paths = plot_metrics(read_metrics(run_dir), run_dir / "figures")
    plot_reward_vs_kl({"ppo": rows, "ppo_overopt": rows2}, run_dir / "figures" / "reward_vs_kl.png")

Every panel shows the raw value of each update as faint points and a smoothed line over
them: RL curves are noisy, and the trend is what tells a healthy run from a broken one, but
hiding the raw points would hide the noise level too.

matplotlib is imported on first use with the Agg backend, so importing this module stays
cheap and works without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlhfkit.report.signals import NOT_SIGNALS, STACKED_TIMES, group_by_key, group_named

__all__ = ["plot_metrics", "plot_reward_vs_kl", "smooth", "numeric_keys", "gold_key"]

# Dashed guides where a signal has a meaningful level: a ratio of exactly 1 is on-policy,
# explained variance 0 is "no better than a constant", whitened advantages average 0.
REFERENCE_LINES = {"ratio_mean": 1.0, "value/explained_variance": 0.0, "advantages/mean": 0.0}
COLUMNS = 3
DPI = 100
PANEL_INCHES = (4.3, 2.9)  # width, height of one panel of a metrics figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _is_number(value) and math.isfinite(value)


def numeric_keys(rows: Sequence[Mapping]) -> list[str]:
    """Keys holding a finite number in at least one row, first-seen order, step/time excluded."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update((k, None) for k, v in row.items() if k not in NOT_SIGNALS and _finite(v))
    return list(seen)


def gold_key(rows: Sequence[Mapping]) -> str | None:
    """"gold/mean" if logged, else the first other numeric "gold/..." key, else None."""
    keys = [k for k in numeric_keys(rows) if k.startswith("gold/")]
    return "gold/mean" if "gold/mean" in keys else (keys[0] if keys else None)


def series(rows: Sequence[Mapping], *keys: str) -> tuple[list[float], ...]:
    """(steps, values of keys[0], values of keys[1], ...) over the rows where all are finite."""
    kept = [r for r in rows if all(_finite(r.get(k)) for k in keys)]
    steps = [r.get("step", i) for i, r in enumerate(kept)]
    return (steps, *([float(r[k]) for r in kept] for k in keys))


def smooth(values: Sequence[float], bandwidth: float | None = None) -> list[float]:
    """Local linear regression with a Gaussian kernel over the update index (LOESS-like).

    Unlike an exponential moving average it has no lag: a steadily rising score is smoothed
    onto itself, and the line ends where the run ends instead of trailing behind it.
    `bandwidth` is the kernel's std in updates (default: 1/15 of the run, at least 1).
    """
    import numpy as np

    y = np.asarray(values, dtype=float)
    n = len(y)
    if n < 4:
        return y.tolist()
    h = bandwidth or max(1.0, n / 15)
    x = np.arange(n, dtype=float)
    out = np.empty(n)
    for start in range(0, n, 512):          # blocks of rows: memory O(512·n), not O(n²)
        centre = x[start:start + 512, None]
        d = x[None, :] - centre              # (b, n) offsets from each point being smoothed
        w = np.exp(-0.5 * (d / h) ** 2)
        sw, sd, sy = w.sum(1), (w * d).sum(1), (w * y).sum(1)
        sdd, sdy = (w * d * d).sum(1), (w * d * y).sum(1)
        # weighted least squares y ≈ a + b·d; the fit at d = 0 is a
        var = sdd / sw - (sd / sw) ** 2
        slope = np.where(var > 1e-12, (sdy / sw - sd * sy / sw**2) / np.maximum(var, 1e-12), 0.0)
        out[start:start + 512] = sy / sw - slope * sd / sw
    return out.tolist()


# ---------------------------------------------------------------------------- panels

def _panels(group: str, keys: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """[(kind, keys)] of one figure: one "line" panel per key; the stage times share one
    "stack" panel, because their sum is the update time and the stack shows which stage wins."""
    stacked = tuple(k for k in STACKED_TIMES if k in keys) if group == "speed" else ()
    panels = [("stack", stacked)] if stacked else []
    skip = set(stacked) | ({"time/update"} if stacked else set())
    return panels + [("line", (k,)) for k in keys if k not in skip]


def _draw_line(ax, rows, key: str, colour: str) -> None:
    steps, values = series(rows, key)
    smoothed = smooth(values)
    ax.plot(steps, values, "o", ms=3, alpha=0.35, color=colour, lw=0)
    ax.plot(steps, smoothed, "-", lw=1.8, color=colour)
    if key == "score/mean" and any(_finite(r.get("score/std")) for r in rows):
        s_steps, means, stds = series(rows, key, "score/std")
        centre, spread = smooth(means), smooth(stds)
        ax.fill_between(s_steps, [c - s for c, s in zip(centre, spread)],
                        [c + s for c, s in zip(centre, spread)], color=colour, alpha=0.12, lw=0)
    if key in REFERENCE_LINES:
        ax.axhline(REFERENCE_LINES[key], color="0.5", ls="--", lw=0.8)


def _draw_stack(ax, rows, keys: tuple[str, ...]) -> None:
    # Missing stage times count as 0 so every update keeps its place in the stack.
    kept = [r for r in rows if any(_finite(r.get(k)) for k in keys)]
    steps = [r.get("step", i) for i, r in enumerate(kept)]
    layers = [[float(r[k]) if _finite(r.get(k)) else 0.0 for r in kept] for k in keys]
    ax.stackplot(steps, *layers, labels=[k.removeprefix("time/") for k in keys], alpha=0.8)
    total_steps, total = series(rows, "time/update")
    if total:
        ax.plot(total_steps, total, "k-", lw=1.2, label="update")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7, loc="upper left", ncol=2, frameon=False)


def _figure(plt, rows, panels, title: str):
    cols = min(COLUMNS, len(panels))
    nrows = math.ceil(len(panels) / cols)
    width, height = PANEL_INCHES
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, height * nrows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    for i, ((kind, keys), ax) in enumerate(zip(panels, flat)):
        if kind == "stack":
            _draw_stack(ax, rows, keys)
            ax.set_title("time per update", fontsize=10)
        else:
            _draw_line(ax, rows, keys[0], f"C{i % 10}")
            ax.set_title(keys[0], fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("update", fontsize=8)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    # the suptitle 0.1 inch below the top edge, whatever the figure's height
    fig.suptitle(title, fontsize=12, fontweight="bold", y=1 - 0.1 / (height * nrows))
    _fixed_margins(fig, nrows, cols)
    return fig


def _fixed_margins(fig, nrows: int, cols: int) -> None:
    """Margins in inches, the same for every figure of panels: room for 8-point tick labels
    and a y label on the left, an x label and the next row's title between rows, the
    suptitle on top. `tight_layout` finds about the same by drawing each figure once more:
    the demo's 64 panels took 5.5 s a run with it, 3.1 s without."""
    width, height = fig.get_size_inches()
    left, right, bottom, top, gap_x, gap_y = 0.75, 0.15, 0.45, 0.65, 0.65, 0.7
    panel_w = (width - left - right - gap_x * (cols - 1)) / cols
    panel_h = (height - bottom - top - gap_y * (nrows - 1)) / nrows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gap_x / panel_w, hspace=gap_y / panel_h)


def plot_metrics(rows: Sequence[Mapping], out_dir: str | Path) -> list[Path]:
    """One PNG per group of signals present in `rows` (rewards.png, kl.png, policy.png,
    value.png, responses.png, optimisation.png, speed.png, other.png), in that order.

    `rows` are metrics lines as `rlhfkit.metrics.read_metrics` returns them. Absent keys are
    skipped (critic-free runs have no value figure); non-finite values are left out.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keys in group_by_key(numeric_keys(rows)).items():
        fig = _figure(plt, rows, _panels(name, keys), group_named(name).title)
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- Gao et al.

def plot_reward_vs_kl(runs: Mapping[str, Sequence[Mapping]], out_path: str | Path) -> Path | None:
    """Proxy and gold reward (y) against KL to the reference (x), every run on one axes.

    Gao et al. 2022 ("Scaling laws for reward model overoptimization"): as the policy moves
    away from the reference, the proxy reward it is trained on keeps rising while the gold
    reward rises, peaks and falls. A healthy run stays left of the peak; an over-optimised
    one (small β, many updates) runs past it. Solid lines are the proxy, dashed the gold.
    Runs without "kl/mean" or a "gold/..." key are skipped; None when none is left.
    """
    drawable = {name: rows for name, rows in runs.items()
                if gold_key(rows) and "kl/mean" in numeric_keys(rows)}
    if not drawable:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, rows) in enumerate(drawable.items()):
        proxy = "score/raw_mean" if "score/raw_mean" in numeric_keys(rows) else "score/mean"
        for key, style, marker, what in ((proxy, "-", "o", "proxy"), (gold_key(rows), "--", "^", "gold")):
            _, kl, reward = series(rows, "kl/mean", key)
            ax.plot(kl, reward, marker, ms=3, alpha=0.3, color=f"C{i}", lw=0)
            ax.plot(smooth(kl), smooth(reward), style, lw=2, color=f"C{i}",
                    label=f"{name}: {what} ({key})")
    ax.set_xlabel("KL(π ‖ π_ref) per response, nats")
    ax.set_ylabel("reward")
    ax.set_title("Proxy vs gold reward as the policy drifts (Gao et al. 2022)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    plt.close(fig)
    return out_path
