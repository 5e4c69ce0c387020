"""Files of the universality study: summary.json, matches tables, figures and report.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..cache import atomic_write_bytes, atomic_write_json
from ..metrics import METRIC_DEFINITIONS
from .escape import md_code, md_text
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
            "assign_corr", "logit_corr_of_match", "logit_corr_centred_of_match", "cluster_a", "representative_a",
            "logit_best_b", "logit_best_corr", "attribution_corr_of_match",
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


def _ci(d: dict | None, key: str = "median") -> str:
    if not d or d.get(key) is None:
        return "n/a"
    return f"{d[key]:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"


def _intervals_lines(s: dict) -> list[str]:
    iv = s.get("intervals")
    if not iv:
        return []
    lines = ["## Intervals", "", f"{iv['how']}.", "",
             "| figure | value [95% interval] |", "|---|---|",
             f"| features, median max act corr | {_ci(iv['features_median'])} |",
             f"| neurons, median max act corr | {_ci(iv['neurons_median'])} |",
             f"| features − neurons | {_ci(iv['features_minus_neurons'], 'diff')} |",
             f"| features, one-to-one median | {_ci(iv['features_one_to_one_median'])} |"]
    rep = s.get("replicates")
    if rep:
        lines += ["", f"Over {rep['k']} replicates ({md_text(rep['how'])}): mean [95% t interval]:", "",
                  "| figure | mean [95% interval] | per replicate |", "|---|---|---|"]
        for key, r in rep["figures"].items():
            per = ", ".join(_fmt(v) for v in r["values"])
            lines.append(f"| {key} | {_fmt(r['mean'])} [{_fmt(r['lo'])}, {_fmt(r['hi'])}] | {per} |")
    return lines + [""]


def _views_lines(s: dict) -> list[str]:
    v, red = s.get("views"), s.get("redundancy")
    if not v or not red:
        return []
    fv, nv = v["features"], v["neurons"]
    lines = ["## Copies inside each dictionary, and the matching views", "", md_text(red["how"]) + ".", "",
             "| | run A | run B | neurons (A) |", "|---|---|---|---|"]
    keys = [("twin_median_act_corr", "median twin act corr"), ("twin_share_act_0.9", "share with a twin > 0.9 (act)"),
            ("twin_median_dec_cos", "median twin decoder cosine"), ("twin_share_dec_0.9", "share with a twin > 0.9 (decoder)"),
            ("n_clusters_act_0.9", "distinct features (act clusters at 0.9)"),
            ("n_clusters_dec_0.9", "distinct features (decoder clusters at 0.9)"),
            ("largest_cluster_act", "largest act cluster"), ("n_counted", "units counted")]
    for k, label in keys:
        lines.append(f"| {label} | {_fmt(red['A'].get(k))} | {_fmt(red['B'].get(k))} | {_fmt(red['neurons_A'].get(k))} |")
    lines += ["", md_text(v["how"]) + ". De-duplicated: " + md_text(fv.get("dedup_how", "")) + ".", "",
              "| | many-to-one (paper) | one-to-one | mutual share | median of mutual | distinct best matches | n |",
              "|---|---|---|---|---|---|---|",
              f"| features | {_fmt(fv['many_to_one_median'])} | {_fmt(fv['one_to_one_median'])} | {_fmt(fv['mutual_share'])} | "
              f"{_fmt(fv['mutual_median'])} | {fv['n_distinct_best']} | {fv['n']} |",
              f"| features, de-duplicated | {_fmt(fv.get('dedup_many_to_one_median'))} | {_fmt(fv.get('dedup_one_to_one_median'))} | "
              f"{_fmt(fv.get('dedup_mutual_share'))} | {_fmt(fv.get('dedup_mutual_median'))} | {fv.get('dedup_n_distinct_best')} | "
              f"{fv.get('dedup_n')} |",
              f"| neurons | {_fmt(nv['many_to_one_median'])} | {_fmt(nv['one_to_one_median'])} | {_fmt(nv['mutual_share'])} | "
              f"{_fmt(nv['mutual_median'])} | {nv['n_distinct_best']} | {nv['n']} |", ""]
    return lines


def _decoder_lines(s: dict) -> list[str]:
    """The decoder-cosine yardstick (``summary["decoder_cosine"]``) in one line, beside the activation views."""
    dc = s.get("decoder_cosine")
    if not dc:
        return []
    f, n, r = dc["features"], dc.get("neurons") or {}, dc["random"]
    fit = (f" (the map explains {dc['map_r2']:.1%} of B's neuron variance over {dc.get('map_tokens', 0):,} analysis tokens)"
           if dc.get("map_r2") is not None else "")
    return [f"Decoder directions, the field's other yardstick: {_fmt(f['share_above'])} of A's {f['n']} features have a "
            f"one-to-one decoder match in B with cosine > {dc['threshold']:g} (median matched cosine "
            f"{_fmt(f['median_cos'])}); A's neurons {_fmt(n.get('share_above'))} (median {_fmt(n.get('median_cos'))}); "
            f"a random decoder {_fmt(r['share_above'])} (median {_fmt(r['median_cos'])}){fit}. "
            + md_text(dc["how"]) + ".", ""]


def _baseline_lines(s: dict) -> list[str]:
    b = s.get("baselines")
    if not b:
        return []
    f, n = s["features"], s["neurons"]
    bf, bn = b["features"], b["neurons"]
    lines = ["## Baselines beside every view", "", md_text(b["how"]) + ".", "",
             "| view | features: matched | random pairs | shuffled-token matches | neurons: matched | random pairs | "
             "shuffled-token matches |", "|---|---|---|---|---|---|---|",
             f"| activation corr | {_fmt(f['median_max_act_corr'])} | {_fmt(bf['random_act_corr_median'])} | "
             f"{_fmt(s['chance']['features_shuffled_median_max_act_corr'])} | {_fmt(n['median_max_act_corr'])} | "
             f"{_fmt(bn['random_act_corr_median'])} | {_fmt(s['chance']['neurons_shuffled_median_max_act_corr'])} |",
             f"| logit-effect corr (raw) | {_fmt(f['median_logit_corr_of_match'])} | {_fmt(bf['random_logit_corr_median'])} | "
             f"{_fmt(bf['shuffled_logit_corr_median'])} | {_fmt(n['median_logit_corr_of_match'])} | "
             f"{_fmt(bn['random_logit_corr_median'])} | {_fmt(bn['shuffled_logit_corr_median'])} |",
             f"| logit-effect corr (centred) | {_fmt(f.get('median_logit_corr_centred_of_match'))} | "
             f"{_fmt(bf['random_logit_corr_centred_median'])} | {_fmt(bf['shuffled_logit_corr_centred_median'])} | "
             f"{_fmt(n.get('median_logit_corr_centred_of_match'))} | {_fmt(bn['random_logit_corr_centred_median'])} | "
             f"{_fmt(bn['shuffled_logit_corr_centred_median'])} |",
             f"| attribution corr | {_fmt(f.get('median_attribution_corr_of_match'))} | "
             f"{_fmt(bf['random_attribution_corr_median'])} | {_fmt(bf['shuffled_attribution_corr_median'])} | "
             f"{_fmt(n.get('median_attribution_corr_of_match'))} | {_fmt(bn['random_attribution_corr_median'])} | "
             f"{_fmt(bn['shuffled_attribution_corr_median'])} |", "",
             f"Neurons' attribution view over the first {b['n_neuron_attribution_tokens']:,} analysis positions."]
    sc = s.get("attribution_scale")
    if sc:
        lines += ["", f"Attribution with the final LN's true per-position 1/sigma (first {sc['n_tokens']:,} positions; "
                  f"1/sigma varies by {100 * sc['inv_sigma_cv_a']:.0f}% / {100 * sc['inv_sigma_cv_b']:.0f}% (coefficient "
                  f"of variation, A / B)): median {_fmt(sc['exact_median'])} against {_fmt(sc['frozen_median'])} with the "
                  f"frozen scale; per feature the two differ by {_fmt(sc['median_abs_diff'])} (median) and "
                  f"{_fmt(sc['p95_abs_diff'])} (95th percentile)."]
    return lines + [""]


def _undertrained_lines(runs: dict) -> list[str]:
    """A loud line per run whose LM is not clearly better than a bigram model of its own corpus."""
    out = []
    for side in ("A", "B"):
        lm = runs[side]["lm"]
        if lm.get("beats_bigram") is False:
            out += [f"**Warning: the LM of run {side} is no better than a bigram model of its corpus** (validation "
                    f"loss {_fmt(lm.get('val_loss'), 3)} against the bigram's {_fmt(lm.get('bigram_loss'), 3)} nats; "
                    f"a margin of {lm.get('bigram_margin')} nats is needed). Its neurons and features mean little: "
                    "train it longer (`--lm-tokens`) or give it more text.", ""]
    return out


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
        *_undertrained_lines(runs),
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
        f"| median max act corr, dead counted as 0 | {_fmt(f.get('median_max_act_corr_dead_as_0'))} | | "
        f"{_fmt(n.get('median_max_act_corr_dead_as_0'))} | |",
        "",
        f"Exclusion rule: {s.get('exclusion_rule', 'n/a')}. Counted features: {f['which']}. Dead: {f['n_dead']}; "
        f"alive but too rare to count: {f['n_excluded_rare']}. Neurons: {n.get('n_included')} counted, "
        f"{n.get('n_dead', 'n/a')} dead, {n.get('n_excluded_rare', 'n/a')} too rare.",
        "",
        *_intervals_lines(s),
        *_views_lines(s),
        *_decoder_lines(s),
        *_baseline_lines(s),
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
    for key, fmt in (("val_loss", 3), ("unigram_entropy", 3), ("bigram_loss", 3), ("gain_over_bigram", 3),
                     ("tokens_trained", 0)):
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
              "- Logit effect: decoder direction -> MLP output weights -> final LN (centring and gain; its 1/sigma is "
              "frozen: a positive per-position scalar, invisible to the logit-effect correlation over the vocabulary) "
              "-> unembedding. Centred variant: each basis' mean logit-effect vector over all its units is "
              "subtracted from every row before correlating.",
              "- Attribution: per position, activation times the logit effect on the actual next token; correlation of "
              "those vectors over positions for the matched pair. The final LN's 1/sigma varies by position and LM, "
              "so the frozen scale is an approximation; its error is measured above (true per-position 1/sigma "
              "against the frozen one).",
              "- Chance: the same matching after permuting B's tokens.",
              "", f"Code version {md_code(summary['provenance']['git_revision'])}; "
              f"command {md_code(summary['provenance']['command'])}.", ""]
    return "\n".join(lines)
