"""Files of the universality study: summary.json, matches tables, figures and report.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cache import atomic_write_bytes, atomic_write_json
from ..metrics import METRIC_DEFINITIONS
from .escape import md_code
from ..analyses.universality import PAPER_FIGURES
from ..provenance import provenance
from .common import save_figure, write_table


def _fig_hist(res):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = res["features"]
    feats = f.loc[f["counted"], "corr"].dropna().to_numpy()
    neur = res["neurons"]["corr"].dropna().to_numpy()
    bins = np.linspace(-0.05, 1.0, 43)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.hist(feats, bins=bins, density=True, alpha=0.6, label=f"features (n={len(feats)}), median {np.median(feats):.2f}")
    ax.hist(neur, bins=bins, density=True, alpha=0.6, label=f"neurons (n={len(neur)}), median {np.median(neur):.2f}")
    ch = res["chance"]["features"][f["counted"].to_numpy()]
    ch = ch[np.isfinite(ch)]
    if len(ch):
        ax.axvline(np.median(ch), color="k", ls=":", label=f"chance (shuffled), median {np.median(ch):.2f}")
    ax.set_xlabel("max activation correlation with run B")
    ax.set_ylabel("density")
    ax.set_title("Universality: best match in run B")
    ax.legend(fontsize=8)
    return fig


def _fig_scatter(res):
    import matplotlib.pyplot as plt

    f = res["features"]
    f = f[f["counted"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(f["corr"], f["logit_corr_of_match"], s=3, alpha=0.4)
    ax.set_xlabel("activation correlation with best match")
    ax.set_ylabel("logit-effect correlation of that match")
    ax.set_xlim(-0.05, 1.02)
    ax.set_ylim(-1.02, 1.02)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("Activation vs logit-effect similarity")
    return fig


def _fig_density(res):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for key, label in (("features", "features (all alive)"), ("neurons", "neurons")):
        b = res["density_bins"][key]
        if len(b):
            x = (b["log10_density_lo"] + b["log10_density_hi"]) / 2
            ax.plot(x, b["median_corr"], marker="o", label=label)
    f = res["features"]
    alive = f["density_a"] > 0
    ax.scatter(np.log10(f.loc[alive, "density_a"]), f.loc[alive, "corr"], s=2, alpha=0.15, color="C0")
    ax.set_xlabel("log10 firing density over analysis tokens")
    ax.set_ylabel("max activation correlation (median per bin)")
    ax.set_title("Which features are universal")
    ax.legend(fontsize=8)
    return fig


def _fmt(v, nd=3):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def write_universality(out: Path, res: dict, cfg, extra: dict | None = None) -> dict:
    """Write the study's files under ``out``; returns the summary written to ``summary.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = res["summary"]
    runs = res["runs"]
    summary = {
        "universality": s,
        "runs": runs,
        "paper": PAPER_FIGURES,
        "metric_definitions": METRIC_DEFINITIONS,
        "config": cfg.to_dict(),
        "provenance": provenance(),
        **(extra or {}),
    }
    cols = ["a", "density_a", "count_a", "counted", "best_b", "corr", "mutual", "best_a_of_b", "assign_b",
            "assign_corr", "logit_corr_of_match", "logit_best_b", "logit_best_corr", "attribution_corr_of_match",
            "density_b", "top_tokens_a", "top_tokens_b"]
    write_table(res["features"][[c for c in cols if c in res["features"]]], out / "matches")
    write_table(res["neurons"], out / "neuron_matches")
    for k, b in res["density_bins"].items():
        write_table(b, out / f"density_bins_{k}", csv=True)
    figs = {
        "hist": save_figure(_fig_hist(res), out / "max_corr_hist"),
        "scatter": save_figure(_fig_scatter(res), out / "act_vs_logit_corr"),
        "density": save_figure(_fig_density(res), out / "corr_vs_density"),
    }
    summary["figures"] = figs
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "report.md", _report(summary, res).encode())
    return summary


def _report(summary: dict, res: dict) -> str:
    s = summary["universality"]
    f, n, ch = s["features"], s["neurons"], s["chance"]
    runs = summary["runs"]
    cfg = summary["config"]
    diff = s["features_minus_neurons_median"]
    verdict = ("**shows**" if diff is not None and diff > 0.05 else "**does not show**")
    top = res["features"][res["features"]["counted"]].sort_values("corr", ascending=False).head(12)
    lines = [
        "# Universality: features of run A vs run B",
        "",
        f"Dictionary size {res['size']} on the MLP (d_mlp={cfg['model']['d_mlp']}) of two one-layer transformers that "
        f"differ only in seed ({cfg['seed_a']} and {cfg['seed_b']}); correlations over "
        f"{s['n_analysis_tokens']:,} held-out analysis tokens.",
        "",
        f"This run {verdict} the paper's finding: the median over counted features of the best-match activation "
        f"correlation is **{_fmt(f['median_max_act_corr'], 2)}**, against **{_fmt(n['median_max_act_corr'], 2)}** "
        f"for neurons (difference {_fmt(diff, 2)}); chance (B's tokens shuffled) is "
        f"{_fmt(ch['features_shuffled_median_max_act_corr'], 2)}. The paper reports 0.72 for features and 0.46 for "
        "neurons (A/1 vs B/1, about 41M tokens).",
        "",
        "| | features (counted) | features (all alive) | neurons | paper: features / neurons |",
        "|---|---|---|---|---|",
        f"| median max act corr | {_fmt(f['median_max_act_corr'])} | {_fmt(f['all_alive']['median_max_act_corr'])} | "
        f"{_fmt(n['median_max_act_corr'])} | 0.72 / 0.46 |",
        f"| mean max act corr | {_fmt(f['mean_max_act_corr'])} | {_fmt(f['all_alive']['mean_max_act_corr'])} | "
        f"{_fmt(n['mean_max_act_corr'])} | |",
        f"| share with match > 0.5 | {_fmt(f['frac_max_act_corr_gt_0.5'])} | {_fmt(f['all_alive']['frac_max_act_corr_gt_0.5'])} | "
        f"{_fmt(n['frac_max_act_corr_gt_0.5'])} | |",
        f"| share with match > 0.7 | {_fmt(f['frac_max_act_corr_gt_0.7'])} | {_fmt(f['all_alive']['frac_max_act_corr_gt_0.7'])} | "
        f"{_fmt(n['frac_max_act_corr_gt_0.7'])} | |",
        f"| median logit-effect corr of the match | {_fmt(f['median_logit_corr_of_match'])} | "
        f"{_fmt(f['all_alive']['median_logit_corr_of_match'])} | {_fmt(n['median_logit_corr_of_match'])} | |",
        f"| median attribution corr of the match | {_fmt(f.get('median_attribution_corr_of_match'))} | "
        f"{_fmt(f['all_alive'].get('median_attribution_corr_of_match'))} | | |",
        f"| share of mutual best matches | {_fmt(f['frac_mutual'])} | {_fmt(f['all_alive']['frac_mutual'])} | "
        f"{_fmt(n['frac_mutual'])} | |",
        f"| number included | {f['n_included']} | {f['all_alive']['n_included']} | {n['n_included']} | |",
        "",
        f"Counted features: {f['which']}. Dead: {f['n_dead']}; alive but too rare to count: {f['n_excluded_rare']}.",
        "",
        "![max correlation histogram](max_corr_hist.png)",
        "",
        "![activation vs logit correlation](act_vs_logit_corr.png)",
        "",
        "![correlation vs density](corr_vs_density.png)",
        "",
        "## The runs",
        "",
        "| | run A | run B |",
        "|---|---|---|",
    ]
    for key, fmt in (("val_loss", 3), ("unigram_entropy", 3), ("bigram_loss", 3), ("tokens_trained", 0)):
        va, vb = runs["A"]["lm"].get(key), runs["B"]["lm"].get(key)
        lines.append(f"| LM {key} | {_fmt(va, fmt) if fmt else f'{va:,}'} | {_fmt(vb, fmt) if fmt else f'{vb:,}'} |")
    for key in ("fvu", "l0", "loss_recovered_zero", "loss_recovered_mean", "dead_frac", "ultralow_frac"):
        lines.append(f"| SAE {key} | {_fmt(runs['A']['sae'].get(key))} | {_fmt(runs['B']['sae'].get(key))} |")
    lines += ["", "## Most universal features (counted)", "",
              "| A feature | density | best B | act corr | logit corr | top tokens A | top tokens B |", "|---|---|---|---|---|---|---|"]
    for _, r in top.iterrows():
        lines.append(f"| {r['a']} | {r['density_a']:.2e} | {r['best_b']} | {r['corr']:.3f} | {_fmt(r['logit_corr_of_match'], 2)} | "
                     f"{md_code(r.get('top_tokens_a', ''), in_table=True)} | {md_code(r.get('top_tokens_b', ''), in_table=True)} |")
    lines += ["", "## How the figures are computed", "",
              "- Max activation correlation: exact Pearson correlation over the analysis tokens between a feature of A "
              "and every feature of B; the best is kept (`matches.parquet`: `best_b`, `corr`).",
              "- Logit effect: decoder direction -> MLP output weights -> final LN (centring and gain; 1/sigma is a "
              "positive per-position scalar that no correlation sees) -> unembedding.",
              "- Attribution: per position, activation times the logit effect on the actual next token; correlation of "
              "those vectors for the matched pair.",
              "- Chance: the same matching after permuting B's tokens.",
              "", f"Code version {md_code(summary['provenance']['git_revision'])}; "
              f"command {md_code(summary['provenance']['command'])}.", ""]
    return "\n".join(lines)
