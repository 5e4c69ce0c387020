"""Files of the universality-scaling study: the grid table, summary.json, figures and report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import atomic_write_bytes, atomic_write_json
from ..config import ConfigError
from ..metrics import METRIC_DEFINITIONS
from .escape import md_code
from ..analyses.universality import PAPER_FIGURES
from ..provenance import provenance
from .common import jsonable, save_figure, write_table

# per-point lists (density curves) stay in the JSON files, not in the flat table
_NESTED = ("density_curve_features", "density_curve_neurons")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(df: pd.DataFrame):
    """(label, frame) per recipe and size, in table order."""
    for (recipe, n), g in df.groupby(["recipe", "n_features"], sort=False):
        yield f"{recipe} n={n}", recipe, g


def _style(recipes: list[str], recipe: str, sizes: list[int], n: int) -> dict:
    ls = ["-", "--", ":", "-."][recipes.index(recipe) % 4]
    shade = 0.35 + 0.65 * (sizes.index(n) + 1) / len(sizes)
    cmap = ["Blues", "Oranges", "Greens"][recipes.index(recipe) % 3]
    import matplotlib

    return {"ls": ls, "color": matplotlib.colormaps[cmap](shade), "marker": "o", "ms": 3}


def _tok(v: float) -> str:
    """Token count as a short label: 999,424 -> '1M', 499,712 -> '0.5M', 30,000 -> '30k'."""
    return f"{v / 1e6:.2g}M" if v >= 2e5 else f"{v / 1e3:.2g}k"


def _panels_vs(d: pd.DataFrame, axes, panels, x: str, xlabel: str) -> None:
    """One line per recipe and size of column ``col`` against ``x`` in each ``(col, title)`` panel."""
    recipes, sizes = list(dict.fromkeys(d["recipe"])), sorted(d["n_features"].unique())
    ticks = sorted(d[x].unique())
    for ax, (col, title) in zip(axes, panels):
        for label, recipe, g in _lines(d):
            ax.plot(g[x], g[col], label=label, **_style(recipes, recipe, sizes, g["n_features"].iloc[0]))
        ax.set_xscale("log")
        ax.set_xticks(ticks, [_tok(t) for t in ticks], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=9)


def main_analysis_tokens(df: pd.DataFrame) -> int:
    """The analysis-set size the per-budget figures use: the largest one measured at the most points
    (the grid measures every budget on one set and only some budgets on every set)."""
    counts = df.groupby("analysis_tokens").size()
    return int(counts[counts == counts.max()].index.max())


def fig_vs_tokens(df: pd.DataFrame):
    plt = _plt()
    nt = main_analysis_tokens(df)
    d = df[df["analysis_tokens"] == nt]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), sharey=True, layout="constrained")
    _panels_vs(d, axes, [("features_paper_median", "features the paper counts (dead, ultralow left out)"),
                         ("features_all_alive_median", "all alive features")], "sae_tokens", "SAE training tokens")
    for ax in axes:
        ax.axhline(d["neurons_median"].iloc[0], color="k", lw=1.2, label="neurons")
        ax.axhline(d["neurons_median"].iloc[0] + 0.2, color="k", lw=0.8, ls="--", label="neurons + 0.2")
        ax.axhline(d["chance_paper_median"].median(), color="grey", lw=1, ls=":", label="chance (shuffled)")
    axes[0].set_ylabel(f"median max activation correlation\n(over {nt:,} analysis tokens)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Universality of features vs SAE training tokens")
    return fig


def fig_fixed_l0(df: pd.DataFrame, earlier: pd.DataFrame | None = None):
    """Universality and the L0 reached against SAE tokens: each recipe's fixed-lambda lines beside its
    fixed-L0 arms (one line per target and size), so training length and sparsity come apart.
    ``earlier``: rows of an earlier table; a base recipe whose fixed-lambda points this run did not
    measure (``--no-fixed-lambda``) takes them from there, labelled with their revision.
    None when the grid has no fixed-L0 arm."""
    if "target_l0" not in df.columns or not df["target_l0"].notna().any():
        return None
    plt = _plt()
    nt = main_analysis_tokens(df)
    d = df[df["analysis_tokens"] == nt].copy()
    d["from_table"] = None
    if earlier is not None and len(earlier) and "recipe" in earlier:
        bases_l0 = set(d.loc[d["target_l0"].notna(), "base_recipe"])
        have = set(d.loc[d["target_l0"].isna(), "recipe"])
        e = earlier[earlier["recipe"].isin(bases_l0 - have) & (earlier["analysis_tokens"] == nt)]
        if "target_l0" in e:
            e = e[e["target_l0"].isna()]
        if len(e):
            e = e.assign(from_table=e["git_revision"].astype(str).str[:7] if "git_revision" in e else "earlier")
            d = pd.concat([d, e], ignore_index=True)
    d["base"] = d["base_recipe"].where(d["target_l0"].notna(), d["recipe"]) if "base_recipe" in d else d["recipe"]
    bases = list(dict.fromkeys(d.loc[d["target_l0"].notna(), "base"]))
    sizes = sorted(d["n_features"].unique())
    fig, axes = plt.subplots(len(bases), 2, figsize=(12.5, 4.2 * len(bases)), squeeze=False, layout="constrained")
    import matplotlib

    for row, base in zip(axes, bases):
        g_all = d[d["base"] == base]
        targets = [None] + sorted(g_all["target_l0"].dropna().unique())
        for (t, n), g in g_all.groupby([g_all["target_l0"].fillna(-1), "n_features"], sort=True):
            t = None if t == -1 else t
            g = g.sort_values("sae_tokens")
            shade = 0.35 + 0.65 * (sizes.index(n) + 1) / len(sizes)
            cmap = ["Greys", "Blues", "Oranges", "Greens", "Purples"][targets.index(t) % 5]
            style = {"color": matplotlib.colormaps[cmap](shade), "marker": "o", "ms": 3,
                     "ls": "--" if t is None else "-"}
            label = f"{'fixed λ' if t is None else f'L0 {t:g}'} n={n}"
            src = g["from_table"].dropna().unique()
            if len(src):
                label += f" (table, {', '.join(src)})"
            row[0].plot(g["sae_tokens"], g["features_paper_median"], label=label, **style)
            row[1].plot(g["sae_tokens"], (g["l0_a"] + g["l0_b"]) / 2, label=label, **style)
        for t in targets[1:]:
            row[1].axhline(t, color="grey", lw=0.6, ls=":")
        row[0].axhline(g_all["neurons_median"].iloc[0], color="k", lw=1.2, label="neurons")
        ticks = sorted(g_all["sae_tokens_budget"].unique())
        for ax, title in ((row[0], f"{base}: universality (features the paper counts)"),
                          (row[1], f"{base}: L0 reached (mean of A and B; dotted: targets)")):
            ax.set_xscale("log")
            ax.set_xlabel("SAE training tokens")
            ax.set_title(title, fontsize=9)
            ax.set_xticks(ticks, [_tok(t) for t in ticks], minor=False)
            ax.set_xticks([], minor=True)
        row[1].set_yscale("log")
        row[0].set_ylabel(f"median max activation correlation\n(over {nt:,} analysis tokens)")
        row[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Training length or sparsity: fixed lambda (dashed) against fixed L0 (solid)")
    return fig


def fig_tradeoff(df: pd.DataFrame):
    """Universality against loss recovered (the worse of runs A and B), one panel per recipe and one
    line per size through its budgets: what reconstruction costs in cross-seed match."""
    plt = _plt()
    nt = main_analysis_tokens(df)
    d = df[df["analysis_tokens"] == nt].copy()
    d["lr_min"] = d[["loss_recovered_zero_a", "loss_recovered_zero_b"]].min(axis=1)
    recipes, sizes = list(dict.fromkeys(d["recipe"])), sorted(d["n_features"].unique())
    fig, axes = plt.subplots(1, len(recipes), figsize=(6.5 * len(recipes), 4.8), squeeze=False)
    neu = d["neurons_median"].iloc[0]
    for ax, recipe in zip(axes[0], recipes):
        for label, rec, g in _lines(d[d["recipe"] == recipe]):
            g = g.sort_values("sae_tokens")
            ax.plot(g["lr_min"], g["features_paper_median"], label=label,
                    **_style(recipes, rec, sizes, g["n_features"].iloc[0]))
            for _, r in g.iterrows():
                l0 = max(r["l0_a"], r["l0_b"])
                ax.annotate(f"{_tok(r['sae_tokens'])}, L0 {l0:.0f}", (r["lr_min"], r["features_paper_median"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(neu, color="k", lw=1.2, label="neurons")
        ax.axhline(neu + 0.2, color="k", lw=0.8, ls="--", label="neurons + 0.2")
        ax.axvline(0.85, color="grey", lw=0.8, ls="--", label="loss recovered 85%")
        ax.set_xlabel("loss recovered (zero ablation), worse of runs A and B")
        ax.set_title(f"{recipe} (labels: SAE tokens, larger L0 of A and B)", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel(f"features (paper's count): median max correlation\n(over {nt:,} analysis tokens)")
    fig.suptitle("Universality against reconstruction")
    return fig


def fig_health(df: pd.DataFrame):
    plt = _plt()
    d = df[df["analysis_tokens"] == main_analysis_tokens(df)]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    _panels_vs(d, axes, [("dead_frac_a", "dead fraction (run A, analysis tokens)"),
                         ("ultralow_frac_a", "ultralow-density fraction (run A)"),
                         ("loss_recovered_zero_a", "loss recovered (zero ablation, run A)")],
               "sae_tokens", "SAE training tokens")
    axes[2].legend(fontsize=7)
    return fig


def fig_vs_analysis(df: pd.DataFrame):
    plt = _plt()
    # per recipe and size, the budget measured on the most analysis sets (the largest on a tie)
    n_sets = df.groupby(["recipe", "n_features", "sae_tokens"])["analysis_tokens"].transform("size")
    d = df.assign(_n=n_sets).sort_values(["_n", "sae_tokens"])
    best = d.groupby(["recipe", "n_features"], sort=False).tail(1)[["recipe", "n_features", "sae_tokens"]]
    d = df.merge(best, on=["recipe", "n_features", "sae_tokens"])
    budgets = ", ".join(sorted({_tok(t) for t in d["sae_tokens"]}))
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.2), sharey=True, layout="constrained")
    _panels_vs(d, axes, [("features_paper_median", f"features the paper counts (SAE budget {budgets})"),
                         ("features_all_alive_median", f"all alive features (SAE budget {budgets})")],
               "analysis_tokens", "analysis tokens the correlations run over")
    nn = d.drop_duplicates("analysis_tokens").sort_values("analysis_tokens")
    for ax in axes:
        ax.plot(nn["analysis_tokens"], nn["neurons_median"], color="k", marker="s", label="neurons")
        ax.plot(nn["analysis_tokens"], nn["neurons_chance_median"], color="grey", ls=":", label="neurons, shuffled")
    axes[0].set_ylabel("median max activation correlation")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # off the curves
    return fig


def fig_density(points: list[dict]):
    """Median max correlation per density bin at the largest budget and analysis set, features vs neurons."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    with_curve = [p for p in points if p.get("density_curve_features")]
    if not with_curve:
        return None
    nt = main_analysis_tokens(pd.DataFrame(with_curve))
    best = {}
    for p in with_curve:
        if p["analysis_tokens"] == nt and p["sae_tokens"] >= best.get(p["recipe"], {}).get("sae_tokens", -1):
            best[p["recipe"]] = p
    for i, (recipe, p) in enumerate(best.items()):
        c = pd.DataFrame(p["density_curve_features"])
        ax.plot(c["log10_density_lo"] + 0.25, c["median_corr"], marker="o", color=f"C{i}",
                label=f"features, {recipe} n={p['n_features']} ({p['sae_tokens']:,} SAE tokens)")
    p = next(iter(best.values()))
    c = pd.DataFrame(p["density_curve_neurons"])
    ax.plot(c["log10_density_lo"] + 0.25, c["median_corr"], marker="s", color="k", label="neurons")
    ax.set_xlabel("log10 firing density over the analysis tokens (bin centre)")
    ax.set_ylabel("median max activation correlation")
    ax.set_title(f"Which units are universal ({nt:,} analysis tokens)")
    ax.legend(fontsize=7)
    return fig


def write_scaling(out: Path, df: pd.DataFrame, cfg, sc, extra: dict | None = None,
                  table_json: Path | None = None) -> dict:
    """Write the grid's table (Parquet + CSV), figures, summary.json and report.md under ``out``."""
    out = Path(out)
    points = df.to_dict("records")
    flat = df.drop(columns=[c for c in _NESTED if c in df.columns])
    write_table(flat, out / "scaling")
    earlier = earlier_rows(table_json, flat)
    figs = {}
    if len(df):
        figs["vs_tokens"] = save_figure(fig_vs_tokens(df), out / "universality_vs_sae_tokens")
        figs["health"] = save_figure(fig_health(df), out / "dead_and_loss_vs_sae_tokens")
        figs["tradeoff"] = save_figure(fig_tradeoff(df), out / "universality_vs_loss_recovered")
        figs["vs_analysis"] = save_figure(fig_vs_analysis(df), out / "universality_vs_analysis_tokens")
        ff = fig_fixed_l0(df, earlier)
        if ff is not None:
            figs["fixed_l0"] = save_figure(ff, out / "universality_vs_sae_tokens_fixed_l0")
        fd = fig_density(points)
        if fd is not None:
            figs["density"] = save_figure(fd, out / "corr_vs_density")
    summary = {
        "grid": sc.to_dict(),
        "n_points": int(len(df)),
        "headline": headline(df),
        "paper": PAPER_FIGURES,
        "metric_definitions": {**METRIC_DEFINITIONS, **COLUMN_DEFINITIONS},
        "config": cfg.to_dict(),
        "provenance": provenance(),
        "figures": figs,
        **(extra or {}),
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "report.md", report(summary, flat).encode())
    if table_json is not None:
        atomic_write_json(Path(table_json), {"provenance": summary["provenance"], "grid": summary["grid"],
                                             "config": summary["config"], "headline": summary["headline"],
                                             "columns": COLUMN_DEFINITIONS,
                                             "rows": _table_rows(earlier, flat)})
    return summary


def earlier_rows(table_json: Path | None, flat: pd.DataFrame) -> pd.DataFrame:
    """The rows of the table at ``table_json`` that this run did not measure (by ``key``: the same
    point on the same inputs), so a run of part of the grid adds to the table instead of replacing
    it. Empty when there is no table yet; a table that cannot be read is one line of error."""
    if table_json is None or not Path(table_json).exists():
        return pd.DataFrame()
    try:
        rows = json.loads(Path(table_json).read_text())["rows"]
        old = pd.DataFrame(rows)
        if len(old) and "key" not in old:
            raise KeyError("key")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{table_json}: not a grid table this study wrote ({type(e).__name__}: {e}); "
                          f"move it away or pass --table-json none") from None
    if not len(old):
        return old
    new = set(flat["key"]) if "key" in flat else set()
    return old[~old["key"].isin(new)].reset_index(drop=True)


def _table_rows(earlier: pd.DataFrame, flat: pd.DataFrame) -> list[dict]:
    """The table after this run: its earlier rows (in their order), then this run's."""
    return jsonable(pd.concat([earlier, flat], ignore_index=True) if len(earlier) else flat)


COLUMN_DEFINITIONS = {
    "features_paper_*": "over run A's features that fire on at least ultralow_density of the first "
                        "analysis_tokens tokens (the paper's exclusion of dead and ultralow-density features)",
    "features_all_alive_*": "over run A's features that fire at least once on those tokens",
    "*_median / *_mean": "of each unit's max Pearson correlation with any unit of run B over the same tokens",
    "chance_*_median": "the same with B's token order shuffled (seeded; within 1M-token chunks on streamed sets)",
    "analysis_streamed": "true where the analysis set is larger than the corpus's analysis split: its first "
                         "analysis_split_tokens are the split, the next analysis_extra_tokens held-out Python "
                         "sources of installed packages, measured in one streaming pass (stream_pass_s)",
    "neurons_*": "the same matching for the 512 MLP neurons of A vs B (alive neurons)",
    "family_train_s_to_budget": "wall seconds of training run A's family (all sizes, one pass) up to this budget",
    "features_s / matching_s": "seconds to get both runs' feature activations (0 when cached) / to match them",
}


def headline(df: pd.DataFrame) -> list[dict]:
    """One line per recipe and size: the largest budget, on the analysis set measured at the most points."""
    if not len(df):
        return []
    nt = main_analysis_tokens(df)
    d = df[df["analysis_tokens"] == nt]
    out = []
    for (recipe, n), g in d.groupby(["recipe", "n_features"], sort=False):
        r = g.sort_values("sae_tokens").iloc[-1]
        out.append({k: (None if isinstance(r[k], float) and not np.isfinite(r[k]) else
                        (r[k].item() if hasattr(r[k], "item") else r[k]))
                    for k in ("recipe", "n_features", "sae_tokens", "analysis_tokens", "features_paper_median",
                              "features_paper_n", "features_all_alive_median", "features_all_alive_n",
                              "neurons_median", "chance_paper_median", "dead_frac_a", "ultralow_frac_a",
                              "l0_a", "loss_recovered_zero_a", "loss_recovered_mean_a", "fvu_a",
                              *COPY_COLUMNS) if k in r.index})
    return out


#: a point's copy figures (version 2 on): twins per dictionary and the views that count copies once
COPY_COLUMNS = ("one_to_one_median", "mutual_share", "dedup_many_to_one_median", "dedup_one_to_one_median",
                "twin_share_act_0.9_a", "twin_share_act_0.9_b", "twin_share_dec_0.9_a", "twin_share_dec_0.9_b",
                "twin_median_act_corr_a", "twin_median_act_corr_b", "n_clusters_act_0.9_a", "n_clusters_act_0.9_b")


def _fmt(v, nd=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{nd}f}"
    return f"{v:,}" if isinstance(v, (int, np.integer)) else str(v)


def report(summary: dict, flat: pd.DataFrame) -> str:
    prov = summary["provenance"]
    lines = [
        "# Universality vs SAE tokens, dictionary size, recipe and analysis tokens",
        "",
        f"Code version {md_code(prov['git_revision'])}; command {md_code(prov['command'])}. Grid: {summary['grid']}.",
        f"{summary['n_points']} grid points. Paper (A/1 vs B/1): features {PAPER_FIGURES['features_median_max_act_corr']}, "
        f"neurons {PAPER_FIGURES['neurons_median_max_act_corr']}, over ~41M tokens.",
        "",
        "## Largest budget (on the analysis set measured at the most points)",
        "",
        "| recipe | n | SAE tokens | features (paper count) | n counted | all alive | neurons | chance | "
        "dead | ultralow | L0 | loss rec. (zero) | loss rec. (mean) | FVU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for h in summary["headline"]:
        lines.append("| " + " | ".join(_fmt(h[k]) for k in (
            "recipe", "n_features", "sae_tokens", "features_paper_median", "features_paper_n",
            "features_all_alive_median", "neurons_median", "chance_paper_median", "dead_frac_a", "ultralow_frac_a",
            "l0_a", "loss_recovered_zero_a", "loss_recovered_mean_a", "fvu_a")) + " |")
    if any("one_to_one_median" in h for h in summary["headline"]):
        lines += ["", "The same points with their copies counted once: one-to-one (Hungarian-equivalent assignment, "
                  "unassigned as 0) and de-duplicated (one representative per activation-twin cluster at 0.9) medians, "
                  "and each dictionary's share of features with an in-dictionary twin above 0.9.", "",
                  "| recipe | n | SAE tokens | many-to-one (paper) | one-to-one | mutual share | de-duplicated | "
                  "twins > 0.9 act (A / B) | twins > 0.9 decoder (A / B) | distinct (act clusters, A / B) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for h in summary["headline"]:
            g = lambda k: _fmt(h.get(k))
            lines.append(f"| {g('recipe')} | {g('n_features')} | {g('sae_tokens')} | {g('features_paper_median')} | "
                         f"{g('one_to_one_median')} | {g('mutual_share')} | {g('dedup_many_to_one_median')} | "
                         f"{g('twin_share_act_0.9_a')} / {g('twin_share_act_0.9_b')} | "
                         f"{g('twin_share_dec_0.9_a')} / {g('twin_share_dec_0.9_b')} | "
                         f"{g('n_clusters_act_0.9_a')} / {g('n_clusters_act_0.9_b')} |")
    figs = summary.get("figures", {})
    for key, caption in (("vs_tokens", "Universality vs SAE training tokens (neurons and chance as lines)"),
                         ("health", "Dead and ultralow fractions and loss recovered vs SAE tokens"),
                         ("tradeoff", "Universality against loss recovered (each line runs through its budgets)"),
                         ("vs_analysis", "Universality vs the number of analysis tokens"),
                         ("density", "Max correlation against firing density, features and neurons")):
        if key in figs:
            lines += ["", f"### {caption}", "", f"![{caption}]({figs[key][0]})"]
    lines += ["", "## Every grid point", "", "Columns: `scaling.csv`; definitions in `summary.json`.", ""]
    cols = ["recipe", "n_features", "sae_tokens", "analysis_tokens", "features_paper_median", "one_to_one_median",
            "dedup_many_to_one_median", "twin_share_act_0.9_a", "twin_share_act_0.9_b", "twin_share_dec_0.9_a",
            "features_all_alive_median",
            "neurons_median", "chance_paper_median", "dead_frac_a", "loss_recovered_zero_a", "loss_recovered_zero_b",
            "l0_a", "l0_b", "family_train_s_to_budget"]
    copy_cols = {"one_to_one_median", "dedup_many_to_one_median", "twin_share_act_0.9_a", "twin_share_act_0.9_b",
                 "twin_share_dec_0.9_a"}
    cols = [c for c in cols if c not in copy_cols or c in flat]  # points before version 2 lack the copy figures
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, r in (flat[cols] if len(flat) else pd.DataFrame(columns=cols)).iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"
