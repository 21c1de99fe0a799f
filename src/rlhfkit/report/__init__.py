"""The report: plots of every training signal and token-level views of real samples.

    from rlhfkit.report import build_report
    build_report("runs/ppo")          # -> runs/ppo/report.html (+ runs/ppo/figures/*.png)

or `rlhfkit report run_dir=runs/ppo`. The pieces are usable alone:

    plot_metrics(rows, out_dir)       PNGs of every signal in metrics.jsonl, grouped
    plot_reward_vs_kl(runs, path)     proxy and gold reward against KL (Gao et al. 2022)
    token_view_html(sample)           one sample's tokens coloured by reward, value,
                                      advantage and KL
    table_html(rows, columns)         any list of dict rows as an escaped HTML table

matplotlib is imported only when a figure is drawn.
"""

from rlhfkit.report.build import ReportConfig, build_report, find_runs, read_samples
from rlhfkit.report.html import eval_html, table_html
from rlhfkit.report.plots import plot_metrics, plot_reward_vs_kl, smooth
from rlhfkit.report.signals import GROUPS, describe
from rlhfkit.report.tokens import readable_token, token_colour, token_view_html

__all__ = ["build_report", "ReportConfig", "find_runs", "read_samples", "plot_metrics",
           "plot_reward_vs_kl", "smooth", "token_view_html", "token_colour", "readable_token",
           "table_html", "eval_html", "GROUPS", "describe"]
