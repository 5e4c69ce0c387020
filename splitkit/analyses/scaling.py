"""Universality as a function of what it costs: SAE tokens, dictionary size, recipe, analysis tokens.

The paper's headline (features of two seeds match far better than neurons: 0.72 vs 0.46) came from
dictionaries that saw 8B activations and correlations over ~41M tokens. This module measures the
same figure on a grid that a CPU can afford, so a reader sees which of those quantities the finding
depends on:

- ``recipes``: the paper's (L1, unit-norm decoder, resampling) and later ones (``docs/recipes.md``);
- ``sizes``: dictionary sizes, trained together as one family per recipe and run (one pass);
- ``budgets``: SAE training tokens, each a snapshot of the same training run (``paper_budgets``
  for the paper recipe, where set);
- ``analysis_tokens``: how many held-out tokens the correlations run over (prefixes of one store).

Every grid point is a pure function of cached artifacts (families, feature activations) and is
itself cached as a ``scaling_point`` record (a cache stage with manifests, like every other), so an
interrupted grid resumes where it stopped and a finished point is never recomputed.
:func:`run_scaling` returns the table; :mod:`splitkit.report.scaling` writes it.

Which features count, per point (both are always reported):

- ``paper``: the paper's exclusion: features that are dead (no firing on the analysis tokens) or of
  ultralow density (firing on fewer than ``analysis.ultralow_density`` of them) are left out.
- ``all_alive``: every feature that fires at least once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import stable_hash
from ..config import Config, ConfigError, ScalingConfig
from ..provenance import command_line, git_revision
from ..train import get_recipe
from .universality import density_curve, matched_figures, summarize_units, universality_figures

#: bump when a grid point's figures for the same inputs would change
POINT_VERSION = 2  # 2: twin statistics and matching views per point; neurons under the features' exclusion rule
#: version of the ``decoder_point`` records: a point's decoder-cosine columns, cached apart from the
#: point itself, so points cached before these columns existed get them without being measured again
DECODER_POINT_VERSION = 1


def recipe_config(cfg: Config, sc: ScalingConfig, recipe: str, stored_analysis: int | None = None,
                  target_l0: float | None = None) -> Config:
    """The pipeline config of one recipe's families: all sizes, snapshots at every budget but the last.

    ``stored_analysis``: tokens of the analysis activation store (the largest analysis size measured
    from memory; default the largest of the grid). ``target_l0``: a fixed-L0 arm (lambda starts at
    the recipe's grid value and is steered toward that mean L0 with ``sc.target_l0_gain``).
    """
    # the recipe's own schedule over the whole run; budgets are snapshots of it
    budgets = sc.budgets_for(recipe)
    d = {"sizes": tuple(sc.sizes), "recipe": recipe, "n_tokens": budgets[-1],
         "snapshot_tokens": tuple(budgets[:-1]), "l1_warmup_tokens": None, "lr_decay_frac": None}
    if get_recipe(recipe).uses_k:
        d["k"] = sc.topk_k
    else:
        d["l1_coeff"] = sc.l1_coeff_for(recipe)
    if target_l0 is not None:
        d.update(target_l0=float(target_l0), l0_gain=sc.target_l0_gain)
    return cfg.with_overrides(dict=d, analysis={"n_tokens": stored_analysis or sc.analysis_tokens[-1]})


def budget_steps(cfg_r: Config, sc: ScalingConfig) -> list[tuple[int, int | None]]:
    """``(budget, snapshot_step)`` per budget; the last budget is the final dictionary (step None)."""
    bs = cfg_r.dict.batch_size
    n_steps = max(1, cfg_r.dict.n_tokens // bs)
    out = []
    for b in sc.budgets_for(cfg_r.dict.recipe):
        step = max(1, b // bs)
        out.append((b, None if step >= n_steps else step))
    return out


def _flat(prefix: str, block: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in block.items()}


# ------------------------------------------------------------------------------------------------
# The grid
# ------------------------------------------------------------------------------------------------

def _neuron_baseline(cfg: Config, n_t: int, cache: dict, progress: bool) -> dict:
    from .. import pipeline as P

    if n_t in cache:
        return cache[n_t]
    sa = P.get_acts(cfg, cfg.seed_a, "analysis", progress)
    sb = P.get_acts(cfg, cfg.seed_b, "analysis", progress)
    # CSR [n_t, d_mlp] float32: the neurons are ~3% nonzero, so the matcher's sparse path, never densified
    NA, NB = sa.head_csr(n_t), sb.head_csr(n_t)
    # the features' exclusion rule (alive, density >= analysis.ultralow_density) for neurons too
    fig = universality_figures(NA, NB, ultralow_density=cfg.analysis.ultralow_density,
                               shuffle_seed=cfg.analysis.shuffle_seed)
    density = fig["counts"] / n_t
    out = {"figures": {k: fig[k] for k in ("paper", "all_alive", "chance_all_alive_median", "n_dead")},
           "density_curve": density_curve(density, fig["corr"])}
    cache[n_t] = out
    return out


_LEAD_COLUMNS = ["id", "recipe", "n_features", "sae_tokens_budget", "sae_tokens", "analysis_tokens",
                 "features_paper_median", "features_all_alive_median", "neurons_median", "chance_paper_median",
                 "features_paper_n", "features_all_alive_n", "dead_frac_a", "ultralow_frac_a", "l0_a",
                 "loss_recovered_zero_a", "loss_recovered_mean_a", "fvu_a"]


def redundancy_row(FA, FB, w_dec, counts_a, n_t: int, ultralow_density: float, table=None, matrix=None) -> dict:
    """A point's copy figures: each dictionary's twin statistics (activation twins over at most the first
    ``universality.TWIN_TOKENS`` tokens) and the matching views, many-to-one beside one-to-one, mutual and
    de-duplicated (``FA [n_t, n]``, ``FB [n_t, n]``, ``w_dec``: the two decoders ``[n, d_mlp]``).

    ``table``/``matrix``: A's match against B and its correlation matrix where the caller has them
    (``universality.matched_figures``); the de-duplicated matching then reads the matrix instead of
    passing over the tokens again.
    """
    from .. import correlation
    from . import redundancy as R
    from .universality import TWIN_TOKENS, counted_mask, redundancy_block

    counted = counted_mask(counts_a, n_t, ultralow_density)
    counts_b = np.asarray(FB.getnnz(axis=0))
    n_tw = min(n_t, TWIN_TOKENS)
    ra, cla = redundancy_block(FA, w_dec[0], counts_a, counted, n_tw)
    rb, clb = redundancy_block(FB, w_dec[1], counts_b, counted_mask(counts_b, n_t, ultralow_density), n_tw)
    out = {"twin_tokens": int(n_tw)}
    for side, r in (("a", ra), ("b", rb)):
        for k in ("twin_median_act_corr", "twin_share_act_0.9", "twin_median_dec_cos", "twin_share_dec_0.9",
                  "n_clusters_act_0.9", "n_clusters_dec_0.9"):
            out[f"{k}_{side}"] = r.get(k)
    v = R.view_figures(correlation.match(FA, FB, k=8) if table is None else table, counted)
    ia, ib = np.flatnonzero(cla.representative), np.flatnonzero(clb.representative)
    dd = correlation.match(FA[:, ia], FB[:, ib], k=8) if matrix is None else matrix.match(ia, ib, k=8)
    d = R.view_figures(dd, counted[ia])
    out.update({"many_to_one_median": v["many_to_one_median"], "one_to_one_median": v["one_to_one_median"],
                "mutual_share": v["mutual_share"], "n_distinct_best": v["n_distinct_best"],
                "dedup_many_to_one_median": d["many_to_one_median"], "dedup_one_to_one_median": d["one_to_one_median"],
                "dedup_n": d["n"]})
    return out


#: a row's decoder-cosine columns -> (block of ``decoder_matching.decoder_yardstick``, figure)
DECODER_COLUMNS = {"decoder_share": ("features", "share_above"), "decoder_median_cos": ("features", "median_cos"),
                   "decoder_share_neurons": ("neurons", "share_above"),
                   "decoder_median_cos_neurons": ("neurons", "median_cos"),
                   "decoder_share_random": ("random", "share_above"), "decoder_median_cos_random": ("random", "median_cos")}


def add_decoder_columns(cfg: Config, rows: list[dict], fams: dict, n_split: int, map_cache: dict,
                        report_only: bool = False, progress: bool = True, log=print) -> None:
    """Add the decoder-cosine yardstick to every row of ``rows`` (in place): the columns of
    :data:`DECODER_COLUMNS`, ``decoder_threshold`` and ``decoder_map_r2``.

    The figures depend on the two decoders and the map between the LMs' neuron bases only, not on
    the analysis tokens, so they are computed once per (size, snapshot) and cached as a
    ``decoder_point`` record (``DECODER_POINT_VERSION``) apart from the ``scaling_point`` records,
    whose version is unchanged: rows cached before these columns existed get them from that record.
    ``report_only``: read the records only (rows without one keep no decoder columns)."""
    from .. import pipeline as P
    from . import decoder_matching as D

    m = min(D.MAP_TOKENS, n_split)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((int(row["n_features"]), row.get("snapshot_step")), []).append(row)
    for (n, step), members in groups.items():
        params = {"n": n, "step": step, "threshold": D.THRESHOLD, "map_tokens": m, "acts": cfg.acts.to_dict(),
                  "seed": cfg.analysis.shuffle_seed}
        rec = P.get_record(cfg, "decoder_point", params, {"fam_a": fams[cfg.seed_a].key, "fam_b": fams[cfg.seed_b].key},
                           DECODER_POINT_VERSION)
        got = rec.read()
        if got is None and not report_only:
            t0 = time.perf_counter()
            if "map" not in map_cache:
                X = {s: P.get_acts(cfg, s, "analysis", progress).head_csr(m) for s in (cfg.seed_a, cfg.seed_b)}
                M, r2 = D.neuron_basis_map(X[cfg.seed_a], X[cfg.seed_b])
                map_cache["map"] = (M, r2, *(np.asarray(X[s].getnnz(axis=0)) > 0 for s in (cfg.seed_a, cfg.seed_b)))
            M, r2, alive_a, alive_b = map_cache["map"]
            W = [fams[s].sae(n, step).W_dec.detach().cpu().numpy() for s in (cfg.seed_a, cfg.seed_b)]
            y = D.decoder_yardstick(W[0], W[1], M, neurons_alive_a=alive_a, neurons_alive_b=alive_b, map_r2=r2,
                                    seed=cfg.analysis.shuffle_seed, unmapped=False)
            got = {"decoder_threshold": y["threshold"], "decoder_map_r2": r2, "decoder_map_tokens": m,
                   "decoder_s": time.perf_counter() - t0,
                   **{col: y[blk][key] for col, (blk, key) in DECODER_COLUMNS.items()}}
            rec.write(got)
            log(f"[scaling] n{n} step {step}: decoder share > {y['threshold']:g}: {_f(got['decoder_share'])} "
                f"(neurons {_f(got['decoder_share_neurons'])}, random {_f(got['decoder_share_random'])})")
        if got is not None:
            for row in members:
                row.update(got)


def point_id(recipe: str, n: int, budget: int, n_t: int) -> str:
    return f"{recipe}-n{n}-t{budget}-a{n_t}"


def run_scaling(cfg: Config, sc: ScalingConfig, out: str | Path, progress: bool = True,
                log=print, report_only: bool = False, only: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Train (or reuse) every family of the grid, measure every point, return the table.

    Each finished point is cached at once as a ``scaling_point`` record (``pipeline.get_record``,
    keyed by the configs, the two families and ``POINT_VERSION``); a cached point is read back, not
    recomputed. A point an earlier version kept as ``out/points/<id>.json`` with the same key is
    taken into the cache instead of being measured again. ``report_only``: train
    and measure nothing, return the points finished so far (e.g. while the grid runs elsewhere).
    ``only``: shell-style patterns of point ids (``{recipe}-n{size}-t{budget}-a{analysis tokens}``);
    only the unfinished points matching one are measured, the others are read back if finished.
    """
    from .. import pipeline as P

    out = Path(out)
    if cfg.seed_a == cfg.seed_b:
        raise ConfigError(f"seed_a and seed_b must differ (both {cfg.seed_a})")
    avail = P.get_tokens(cfg, progress).info["splits"]["analysis"]["n_tokens"]
    n_ctx = cfg.model.n_ctx
    n_split = (avail // n_ctx) * n_ctx
    # sizes within the corpus's analysis split are measured from stored activations; larger ones
    # continue into the held-out package sources and are streamed (nothing that large is stored)
    stored = [n_t for n_t in sc.analysis_tokens if n_t <= n_split]
    streamed = [n_t for n_t in sc.analysis_tokens if n_t > n_split]
    if streamed:
        P.analysis_tokens(cfg, streamed[-1], progress)  # fails early, with what to change, if too large
    selected = _point_filter(sc, streamed, only)
    neuron_cache: dict = {}
    map_cache: dict = {}
    rows = []
    revision = {"git_revision": git_revision(), "command": command_line()}
    for label, base, target in sc.arms():
        cfg_r = recipe_config(cfg, sc, base, stored[-1] if stored else None, target)
        fams = {}
        for seed in (cfg.seed_a, cfg.seed_b):
            t0 = time.perf_counter()
            if report_only:  # only the key is needed to recognise finished points
                fams[seed] = P.family_artifact(cfg_r, P.get_acts(cfg_r, seed, progress=progress))
                continue
            fams[seed] = P.get_family(cfg_r, seed, progress)
            log(f"[scaling] {label}: family of LM seed {seed} ready ({time.perf_counter() - t0:.0f} s)")
        stream_todo: dict[int, list] = {n_t: [] for n_t in streamed}
        first_row = len(rows)
        for budget, step in budget_steps(cfg_r, sc):
            for n in sc.sizes:
                todo = []
                points = {}
                for n_t in _analysis_sizes_at(sc, base, budget, streamed):
                    pid = point_id(label, n, budget, n_t)
                    # only what a point's figures depend on (not, e.g., the universality study's min_count)
                    analysis = {"ultralow_density": cfg.analysis.ultralow_density, "shuffle_seed": cfg.analysis.shuffle_seed}
                    if n_t in stream_todo:  # what the text and the chance level depend on
                        analysis.update(extra_packages=list(cfg.analysis.extra_packages),
                                        stream_chunk=STREAM_CHUNK_TOKENS)
                    spec = {"dict": cfg_r.dict.key_dict(), "analysis": analysis, "n": n, "step": step, "n_t": n_t}
                    fam_keys = {"fam_a": fams[cfg.seed_a].key, "fam_b": fams[cfg.seed_b].key}
                    # the row's own key (a column of the table), as points were keyed before they were cached
                    key = stable_hash({**spec, **fam_keys, "v": POINT_VERSION})
                    rec = P.get_record(cfg, "scaling_point", spec, fam_keys, POINT_VERSION)
                    points[n_t] = (key, rec)
                    row = rec.read()
                    if row is None:
                        row = _earlier_point(out, pid, key)
                        if row is not None:
                            rec.write(row)
                    if row is not None:
                        rows.append(row)
                        continue
                    if not selected(pid):
                        continue
                    if n_t in stream_todo:
                        stream_todo[n_t].append((n, budget, step, key, rec))
                    else:
                        todo.append(n_t)
                if not todo or report_only:
                    continue
                rows.extend(_measure(cfg, cfg_r, sc, label, n, budget, step, todo, points, fams, neuron_cache,
                                     revision, progress, log))
        for n_t, items in stream_todo.items():
            if items and not report_only:
                rows.extend(_measure_stream(cfg, cfg_r, sc, label, n_t, n_split, items, fams, revision,
                                            progress, log))
        add_decoder_columns(cfg, rows[first_row:], fams, n_split, map_cache, report_only, progress, log)
    df = pd.DataFrame(rows)
    # the same column order whether a point was just measured or read back from its (sorted) JSON
    lead = [c for c in _LEAD_COLUMNS if c in df.columns]
    df = df[lead + sorted(c for c in df.columns if c not in lead)]
    order = {label: i for i, (label, _, _) in enumerate(sc.arms())}
    if len(df):
        df = df.sort_values(["recipe", "n_features", "sae_tokens", "analysis_tokens"],
                            key=lambda c: c.map(order) if c.name == "recipe" else c).reset_index(drop=True)
    return df


def _analysis_sizes_at(sc: ScalingConfig, recipe: str, budget: int, streamed: list[int]) -> list[int]:
    """The analysis sizes measured at one budget: every stored one; streamed ones at ``stream_budgets``."""
    return [n_t for n_t in sc.analysis_tokens if n_t not in streamed or budget in sc.streamed_budgets_for(recipe)]


def _point_filter(sc: ScalingConfig, streamed: list[int], only):
    """``pid -> bool``: whether a point is to be measured; every pattern of ``only`` must name a point."""
    if not only:
        return lambda pid: True
    from fnmatch import fnmatchcase

    ids = [point_id(lab, n, b, n_t) for lab, r, _ in sc.arms() for b in sc.budgets_for(r) for n in sc.sizes
           for n_t in _analysis_sizes_at(sc, r, b, streamed)]
    for pat in only:
        if not any(fnmatchcase(i, pat) for i in ids):
            raise ConfigError(f"--only {pat!r} matches no point of this grid; point ids look like {ids[0]!r} "
                              f"(recipe-n<size>-t<SAE tokens>-a<analysis tokens>, tokens in full)")
    return lambda pid: any(fnmatchcase(pid, pat) for pat in only)


def _earlier_point(out: Path, pid: str, key: str) -> dict | None:
    """A point kept by an earlier version as ``out/points/<pid>.json``, when its key matches (read only)."""
    f = out / "points" / f"{pid}.json"
    try:
        row = json.loads(f.read_text()) if f.is_file() else None
    except ValueError:  # a torn file: measure again
        return None
    return row if row is not None and row.get("key") == key else None


def _measure(cfg, cfg_r, sc, recipe, n, budget, step, todo, points, fams, neuron_cache, revision,
             progress, log) -> list[dict]:
    from .. import pipeline as P

    t0 = time.perf_counter()
    fs = {s: P.get_features(cfg_r, s, n, step, progress) for s in (cfg.seed_a, cfg.seed_b)}
    FA_all, FB_all = fs[cfg.seed_a].acts(), fs[cfg.seed_b].acts()
    t_feat = time.perf_counter() - t0
    tokens, train_s = _budget_tokens(cfg_r, fams[cfg.seed_a], step)
    w_dec = [fams[s].sae(n, step).W_dec.detach().cpu().numpy() for s in (cfg.seed_a, cfg.seed_b)]
    rows = []
    for n_t in todo:
        t1 = time.perf_counter()
        # one pass gives the best matches, the match table and the matrix the de-duplicated view reads
        fig, table, matrix = matched_figures(FA_all[:n_t], FB_all[:n_t], cfg.analysis.ultralow_density,
                                             cfg.analysis.shuffle_seed)
        neur = _neuron_baseline(cfg, n_t, neuron_cache, progress)
        row = {
            "id": point_id(recipe, n, budget, n_t), "key": points[n_t][0], **revision,
            "recipe": recipe, "n_features": n, "sae_tokens_budget": budget, "sae_tokens": int(tokens),
            "snapshot_step": step, "analysis_tokens": int(n_t),
            **_flat("features_paper", fig["paper"]), **_flat("features_all_alive", fig["all_alive"]),
            "chance_paper_median": fig["chance_paper_median"], "chance_all_alive_median": fig["chance_all_alive_median"],
            **_flat("neurons", neur["figures"]["paper"]),
            "neurons_chance_median": neur["figures"]["chance_all_alive_median"],
            "n_dead_a": fig["n_dead"], "n_ultralow_a": fig["n_ultralow"],
            "dead_frac_a": fig["n_dead"] / n, "ultralow_frac_a": fig["n_ultralow"] / n,
            "ultralow_density": cfg.analysis.ultralow_density,
            "family_train_s_to_budget": train_s,
            "features_s": t_feat, "matching_s": None,
        }
        for side, s in (("a", cfg.seed_a), ("b", cfg.seed_b)):
            st = fs[s].stats
            for k in ("fvu", "l0", "loss_recovered_zero", "loss_recovered_mean", "mse"):
                row[f"{k}_{side}"] = st.get(k)
        row.update(redundancy_row(FA_all[:n_t], FB_all[:n_t], w_dec, fig["counts"], n_t, cfg.analysis.ultralow_density,
                                  table, matrix))
        del table, matrix
        if n == sc.density_bins_at:
            row["density_curve_features"] = density_curve(fig["counts"] / n_t, fig["corr"])
            row["density_curve_neurons"] = neur["density_curve"]
        if cfg_r.dict.target_l0 is not None:  # a fixed-L0 arm: its target beside the L0s reached
            row.update(base_recipe=cfg_r.dict.recipe, target_l0=cfg_r.dict.target_l0, l0_gain=cfg_r.dict.l0_gain)
        row["matching_s"] = time.perf_counter() - t1
        rows.append(_save_point(points[n_t][1], row, log))
    return rows


#: tokens per chunk of a streamed analysis set (also the span of its shuffled chance level)
STREAM_CHUNK_TOKENS = 1 << 20


def _measure_stream(cfg, cfg_r, sc, recipe, n_t, n_split, items, fams, revision, progress, log) -> list[dict]:
    """Every point of ``items`` (``(n, budget, step, key, record)``) on ``n_t`` analysis tokens in one streaming pass."""
    from .. import pipeline as P
    from ..analysis_stream import stream_universality
    from ..precision import matmul_dtype

    t0 = time.perf_counter()
    tokens = P.analysis_tokens(cfg, n_t, progress)
    lms = {s: P.get_lm(cfg, s, progress) for s in (cfg.seed_a, cfg.seed_b)}
    pairs = {}
    for n, budget, step, _, _ in items:
        pairs[point_id(recipe, n, budget, n_t)] = tuple(fams[s].sae(n, step) for s in (cfg.seed_a, cfg.seed_b))
    log(f"[scaling] {recipe}: streaming {len(tokens):,} analysis tokens ({min(n_t, n_split):,} from the split, "
        f"{max(0, len(tokens) - n_split):,} from package sources) through {len(pairs)} dictionary pairs ...")
    mm = matmul_dtype(cfg_r.dict.matmul_dtype, cfg.device)
    res, timing = stream_universality(lms[cfg.seed_a].model(cfg.device), lms[cfg.seed_b].model(cfg.device), tokens,
                                      pairs, chunk_tokens=STREAM_CHUNK_TOKENS, shuffle_seed=cfg.analysis.shuffle_seed,
                                      matmul_dtype=mm, device=cfg.device, progress=progress)
    pass_s = time.perf_counter() - t0
    neur = res["neurons"]
    neur_fig = summarize_units(neur.corr, neur.chance, neur.counts, neur.n_tokens, 0.0)
    rows = []
    for n, budget, step, key, rec in items:
        pid = point_id(recipe, n, budget, n_t)
        r = res[pid]
        fig = summarize_units(r.corr, r.chance, r.counts, r.n_tokens, cfg.analysis.ultralow_density)
        tokens_seen, train_s = _budget_tokens(cfg_r, fams[cfg.seed_a], step)
        row = {
            "id": pid, "key": key, **revision, "recipe": recipe, "n_features": n, "sae_tokens_budget": budget,
            "sae_tokens": int(tokens_seen), "snapshot_step": step, "analysis_tokens": int(n_t),
            "analysis_streamed": True, "analysis_split_tokens": int(min(len(tokens), n_split)),
            "analysis_extra_tokens": int(max(0, len(tokens) - n_split)),
            "chance_shuffle": f"B's tokens permuted within chunks of {timing['chunk_tokens']:,}",
            **_flat("features_paper", fig["paper"]), **_flat("features_all_alive", fig["all_alive"]),
            "chance_paper_median": fig["chance_paper_median"], "chance_all_alive_median": fig["chance_all_alive_median"],
            **_flat("neurons", neur_fig["all_alive"]), "neurons_chance_median": neur_fig["chance_all_alive_median"],
            "n_dead_a": fig["n_dead"], "n_ultralow_a": fig["n_ultralow"],
            "dead_frac_a": fig["n_dead"] / n, "ultralow_frac_a": fig["n_ultralow"] / n,
            "ultralow_density": cfg.analysis.ultralow_density, "l0_analysis_a": r.l0,
            "family_train_s_to_budget": train_s, "features_s": None, "matching_s": None,
            "stream_pass_s": pass_s, "stream_points": len(items), "stream_timing": timing,
        }
        for side, s in (("a", cfg.seed_a), ("b", cfg.seed_b)):
            st = P.sae_metrics(cfg_r, s, n, step, progress)
            for k in ("fvu", "l0", "loss_recovered_zero", "loss_recovered_mean", "mse"):
                row[f"{k}_{side}"] = st.get(k)
        # streamed points keep only correlation sums, not the feature activations the twin figures need
        row["redundancy"] = "not measured on a streamed analysis set"
        if n == sc.density_bins_at:
            row["density_curve_features"] = density_curve(r.counts / r.n_tokens, r.corr)
            row["density_curve_neurons"] = density_curve(neur.counts / neur.n_tokens, neur.corr)
        rows.append(_save_point(rec, row, log))
    return rows


def _save_point(rec, row: dict, log) -> dict:
    """Cache a finished point at once (the grid resumes from these records) and log its figures."""
    rec.write(row)
    log(f"[scaling] {row['id']}: features (paper) {_f(row['features_paper_median'])} | all alive "
        f"{_f(row['features_all_alive_median'])} | neurons {_f(row['neurons_median'])} | chance "
        f"{_f(row['chance_paper_median'])} | dead {row['dead_frac_a']:.1%} | LR {_f(row['loss_recovered_zero_a'])}")
    return row


def _budget_tokens(cfg_r, fam, step) -> tuple[int, float | None]:
    """SAE tokens seen at ``step`` (None: the final dictionary) and the training seconds to get there."""
    snap = fam.folder / "snapshots" / f"step_{step}" / "snapshot.json" if step is not None else None
    if snap is not None and snap.is_file():
        info = json.loads(snap.read_text())
        return info["tokens"], info.get("elapsed_s")
    ts = fam.train_summary
    tokens = ts.get("tokens") if step is None else step * cfg_r.dict.batch_size
    train_s = ts.get("elapsed_total_s", ts.get("elapsed_s")) if step is None else None
    return tokens, train_s


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
