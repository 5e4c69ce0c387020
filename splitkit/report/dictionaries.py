"""Files of a family report: per-dictionary metrics in summary.json, metrics.csv/.parquet, the
feature-density histogram (PNG + SVG) and report.md.

The metrics come from the features stage (``pipeline.get_features(...).stats``, gathered per family
by :func:`splitkit.family_metrics.get_family_metrics`); this module only tabulates and writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import atomic_write_bytes, atomic_write_json
from ..metrics import METRIC_DEFINITIONS
from .escape import md_code
from ..provenance import provenance
from .common import save_figure, write_table

# Columns of metrics.csv taken as they are from each dictionary's stats, in this order.
_STAT_COLUMNS = ("n_features", "mse", "fvu", "l0", "loss_recovered_zero", "loss_recovered_mean", "dead_frac",
                 "ultralow_frac", "n_dead", "n_ultralow", "n_density_tokens", "ultralow_density",
                 "median_log10_density", "l0_analysis", "loss_orig", "loss_sae", "loss_zero_ablation",
                 "loss_mean_ablation", "n_eval_tokens", "sae_id", "twin_median_act_corr", "twin_share_act_0.9",
                 "twin_median_dec_cos", "twin_share_dec_0.9", "n_clusters_act_0.9", "n_clusters_dec_0.9",
                 "n_twin_tokens")

COLUMN_DEFINITIONS = {
    "n_features": "dictionary size (features)",
    "n_dead / n_ultralow": "number of features behind dead_frac / ultralow_frac",
    "n_density_tokens": "analysis tokens over which firing densities (dead, ultralow, histogram) are counted",
    "ultralow_density": "density below which a feature that fires counts as ultralow (share of n_density_tokens)",
    "median_log10_density": "median over features that fire at all of log10(tokens fired on / n_density_tokens)",
    "l0_analysis": "as l0, over the n_density_tokens analysis tokens instead of the validation tokens",
    "loss_orig / loss_sae / loss_zero_ablation / loss_mean_ablation": "mean next-token loss (nats/token) over the "
        "n_eval_tokens validation tokens: unchanged model, MLP replaced by the reconstruction, by zeros, by its mean",
    "twin_median_act_corr / twin_share_act_0.9": "median over counted features of the activation correlation with "
        "their most similar OTHER feature of the same dictionary (over the first n_twin_tokens analysis tokens), and "
        "the share whose twin correlates above 0.9",
    "twin_median_dec_cos / twin_share_dec_0.9": "the same by the cosine of decoder rows",
    "n_clusters_act_0.9 / n_clusters_dec_0.9": "distinct features: connected components of the twin graph above 0.9",
    "train_tokens": "activation vectors the dictionary was trained on",
    "train_tokens_per_s": "the family's training throughput: activation vectors through every dictionary of the "
                          "family per wall second (the slowest process's when trained over several)",
}


def family_table(stats_by_size: Mapping[int, dict], train_summary: dict | None = None) -> pd.DataFrame:
    """One row per dictionary size (ascending): the metrics of ``_STAT_COLUMNS``.

    ``stats_by_size``: n_features -> ``FeatureSet.stats``. With the family's ``train_summary``
    (``train_summary.json``), also ``train_tokens`` and ``train_tokens_per_s`` (tokens/s).
    """
    if not stats_by_size:
        raise ValueError("family_table: stats_by_size is empty; give the metrics of at least one dictionary")
    rows = []
    for n in sorted(stats_by_size):
        s = stats_by_size[n]
        row = {c: s.get(c) for c in _STAT_COLUMNS}
        row["n_features"] = int(n)
        if train_summary is not None:
            row["train_tokens"] = (_member(train_summary, n) or {}).get("tokens_seen", train_summary.get("tokens"))
            row["train_tokens_per_s"] = train_summary.get("tokens_per_s")
        rows.append(row)
    df = pd.DataFrame(rows)
    # None (e.g. median density when every feature is dead) becomes NaN, so the column stays numeric
    num = [c for c in df.columns if c != "sae_id"]
    df[num] = df[num].apply(pd.to_numeric)
    return df


def _member(train_summary: dict, n: int) -> dict | None:
    """The trainer's record of the dictionary of size ``n`` (names are ``sae_{n}``, or ``sae_{n}_seed{s}``)."""
    for rec in (train_summary.get("saes") or {}).values():
        if rec.get("n_features") == n:
            return rec
    return None


def training_figures(train_summary: dict | None) -> dict | None:
    """The family's training summary without the per-step logs; each dictionary keeps its last logged step."""
    if train_summary is None:
        return None
    out = {k: v for k, v in train_summary.items() if k != "saes"}
    out["saes"] = {}
    for name, rec in (train_summary.get("saes") or {}).items():
        log = rec.get("log") or {}
        out["saes"][name] = {k: v for k, v in rec.items() if k != "log"}
        out["saes"][name]["last_log"] = {k: v[-1] for k, v in log.items() if v}
    return out


def fig_density_hist(stats_by_size: Mapping[int, dict]):
    """Histograms of log10 feature density (features that fire at all), one step curve per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(stats_by_size)
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    cmap = matplotlib.colormaps["viridis"]
    for i, n in enumerate(sizes):
        s = stats_by_size[n]
        h = s["log10_density_hist"]
        ax.stairs(h["counts"], h["edges"], color=cmap(0.85 * i / max(1, len(sizes) - 1)), lw=1.6,
                  label=f"n={n:,}: {n - s['n_dead']:,} alive, {s['n_dead']:,} dead")
    first = stats_by_size[sizes[0]]
    if first.get("ultralow_density"):
        ax.axvline(np.log10(first["ultralow_density"]), color="grey", ls=":", lw=1,
                   label=f"ultralow threshold ({first['ultralow_density']:g})")
    ax.set_xlabel(f"log10 feature density (share of the {first['n_density_tokens']:,} analysis tokens it fires on)")
    ax.set_ylabel("features")
    ax.set_title("Feature density per dictionary size (dead features not shown)")
    ax.legend(fontsize=8)
    return fig


def family_lines(table: pd.DataFrame) -> list[str]:
    """One console line per size: n, L0, FVU, loss recovered (zero and mean ablation), dead share."""
    return [f"n={int(r.n_features):>7,}  L0 {_f(r.l0, 1)}  FVU {_f(r.fvu)}  loss recovered {_f(r.loss_recovered_zero)} "
            f"(zero) / {_f(r.loss_recovered_mean)} (mean)  dead {_f(100 * r.dead_frac, 1)}%"
            for r in table.itertuples()]


def write_family_report(out: Path, table: pd.DataFrame, stats_by_size: Mapping[int, dict], cfg,
                        train_summary: dict | None, extra: dict | None = None) -> dict:
    """Write summary.json, metrics.csv + metrics.parquet, density_hist.png/.svg and report.md under ``out``.

    ``table``: :func:`family_table`'s frame; ``stats_by_size``: n_features -> ``FeatureSet.stats``;
    ``cfg``: the run's Config; ``extra``: more top-level summary entries (e.g. seed, wall_s).
    Returns the summary written to ``summary.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(table, out / "metrics")
    figs = {"density_hist": save_figure(fig_density_hist(stats_by_size), out / "density_hist")}
    summary = {
        "sizes": [int(n) for n in sorted(stats_by_size)],
        # a list in size order: JSON object keys would be strings and sort "128" before "64"
        "dictionaries": [stats_by_size[n] for n in sorted(stats_by_size)],
        "training": training_figures(train_summary),
        "metric_definitions": {**METRIC_DEFINITIONS, **COLUMN_DEFINITIONS},
        "config": cfg.to_dict(),
        "provenance": provenance(),
        "figures": figs,
        **(extra or {}),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "report.md", _report(summary, table).encode())
    return summary


def _f(v, nd=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def _report(summary: dict, table: pd.DataFrame) -> str:
    cfg = summary["config"]
    d = cfg["dict"]
    first = summary["dictionaries"][0]
    seed = summary.get("seed")
    tr = summary.get("training") or {}
    trained = (f"{tr['tokens']:,} activation vectors at {tr.get('tokens_per_s', 0):,.0f} tokens/s"
               if tr.get("tokens") is not None else "an unknown number of tokens")
    lines = [
        f"# Dictionaries{'' if seed is None else f' on the MLP of LM seed {seed}'}",
        "",
        f"A family of {len(summary['sizes'])} dictionaries (recipe {md_code(d['recipe'])}) on the "
        f"{cfg['model']['d_mlp']} MLP neurons, trained on {trained}. Reconstruction and loss recovered over "
        f"{first.get('n_eval_tokens', 0):,} validation tokens; densities over {first['n_density_tokens']:,} "
        f"analysis tokens: a feature is dead when it fires on none of them, ultralow when it fires on fewer than "
        f"{first['ultralow_density']:g} of them.",
        "",
        "| n | MSE | FVU | L0 | loss rec. (zero) | loss rec. (mean) | dead | ultralow | median log10 density | "
        "train tokens | tokens/s | twins > 0.9 (act / decoder) | distinct (act clusters) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, rd in zip(table.itertuples(), table.to_dict("records")):
        tok = getattr(r, "train_tokens", None)
        tps = getattr(r, "train_tokens_per_s", None)
        lines.append(
            f"| {int(r.n_features):,} | {r.mse:.3g} | {_f(r.fvu)} | {_f(r.l0, 1)} | {_f(r.loss_recovered_zero)} | "
            f"{_f(r.loss_recovered_mean)} | {_f(r.dead_frac)} | {_f(r.ultralow_frac)} | "
            f"{_f(r.median_log10_density, 2)} | "
            f"{'n/a' if tok is None or not np.isfinite(tok) else f'{int(tok):,}'} | "
            f"{'n/a' if tps is None or not np.isfinite(tps) else f'{tps:,.0f}'} | "
            f"{_f(rd.get('twin_share_act_0.9'))} / {_f(rd.get('twin_share_dec_0.9'))} | "
            f"{_f(rd.get('n_clusters_act_0.9'), 0)} |")
    lines += ["", "![feature density histogram](density_hist.png)", "", "## Definitions", ""]
    lines += [f"- `{k}`: {v}" for k, v in summary["metric_definitions"].items()]
    prov = summary["provenance"]
    lines += ["", "Every figure is in `metrics.csv` / `metrics.parquet` and, with the density histograms, in "
              "`summary.json`.", "", f"Code version {md_code(prov['git_revision'])}; command {md_code(prov['command'])}.", ""]
    return "\n".join(lines)
