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
itself saved as one JSON file, so an interrupted grid resumes where it stopped and a finished point
is never recomputed. :func:`run_scaling` returns the table; :mod:`splitkit.report.scaling` writes it.

Which features count, per point (both are always reported):

- ``paper``: the paper's exclusion: features that are dead (no firing on the analysis tokens) or of
  ultralow density (firing on fewer than ``analysis.ultralow_density`` of them) are left out.
- ``all_alive``: every feature that fires at least once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import matching
from .cache import atomic_write_json, stable_hash
from .config import Config, ConfigError, _Section

#: bump when a grid point's figures for the same inputs would change
POINT_VERSION = 1


@dataclass(frozen=True)
class ScalingConfig(_Section):
    """The grid. Budgets and analysis token counts are in tokens; the largest budget is the run's end.

    Each recipe has its own sparsity setting (the same for every size, as in the paper's family):
    ``paper_l1_coeff`` and ``l1_decnorm_coeff`` are lambda of those recipes, ``topk_k`` is k.
    """

    recipes: tuple[str, ...] = ("l1_decnorm", "paper", "topk")
    sizes: tuple[int, ...] = (1024, 2048, 4096)
    budgets: tuple[int, ...] = (500_000, 1_000_000, 2_000_000, 4_000_000, 8_000_000)
    # The paper recipe's budgets, when they differ (None: ``budgets``). By default the same 16x span
    # one octave lower, 0.25M-4M: its families (three sizes, resampling) train at about 3k tokens/s
    # on the 2-core CPU, and 8M tokens for both runs would take most of two working sessions.
    paper_budgets: tuple[int, ...] | None = (250_000, 500_000, 1_000_000, 2_000_000, 4_000_000)
    # up to 4M: the stdlib's analysis split (stored); 16M continues into held-out package sources (streamed)
    analysis_tokens: tuple[int, ...] = (250_000, 500_000, 1_000_000, 2_000_000, 4_000_000, 16_000_000)
    # lambdas that give L0 ~15-20 at 4096 features on the stdlib LMs (measured: docs/results.md)
    paper_l1_coeff: float = 1.2e-3
    l1_decnorm_coeff: float = 1.6e-3
    topk_k: int = 16
    density_bins_at: int = 4096  # size whose per-density curve is kept for every point
    # Analysis sets past the corpus's analysis split are streamed (``analysis_stream``): every point
    # costs a pass of its encoders over the whole set (16M tokens: ~5 min per 4096 features and run
    # on the 2-core CPU). "ends" measures them at each recipe's first and last budget (the analysis
    # axis's budget and the most trained), "last" at the last only, "all" at every budget.
    stream_budgets: str = "ends"

    def __post_init__(self):
        for name in ("recipes", "sizes", "budgets", "analysis_tokens"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
            if not getattr(self, name):
                raise ConfigError(f"scaling.{name} must not be empty")
        if self.paper_budgets is not None and not self.paper_budgets:
            raise ConfigError("scaling.paper_budgets must be None (the same as budgets) or not empty")
        if self.stream_budgets not in ("ends", "last", "all"):
            raise ConfigError(f"scaling.stream_budgets must be 'ends', 'last' or 'all', got {self.stream_budgets!r}")
        bad = [r for r in self.recipes if r not in ("paper", "l1_decnorm", "topk")]
        if bad:
            raise ConfigError(f"scaling.recipes: unknown recipe(s) {bad}; choose from paper, l1_decnorm, topk")
        if isinstance(self.paper_budgets, list):
            object.__setattr__(self, "paper_budgets", tuple(self.paper_budgets))
        for name in ("sizes", "budgets", "analysis_tokens") + (("paper_budgets",) if self.paper_budgets else ()):
            v = getattr(self, name)
            if any((not isinstance(x, int)) or x <= 0 for x in v) or list(v) != sorted(set(v)):
                raise ConfigError(f"scaling.{name} must be increasing positive integers, got {list(v)}")

    def budgets_for(self, recipe: str) -> tuple[int, ...]:
        """The SAE budgets of ``recipe``'s families (the largest ends the run)."""
        return self.paper_budgets if recipe == "paper" and self.paper_budgets else self.budgets

    def streamed_budgets_for(self, recipe: str) -> tuple[int, ...]:
        """The budgets of ``recipe`` measured on streamed analysis sets (see ``stream_budgets``)."""
        b = self.budgets_for(recipe)
        return {"all": b, "last": b[-1:], "ends": tuple(sorted({b[0], b[-1]}))}[self.stream_budgets]


SCALING_PRESETS = {
    "smoke": ScalingConfig(recipes=("l1_decnorm", "paper"), sizes=(64, 128), budgets=(20_480, 40_960, 81_920),
                           paper_budgets=None, stream_budgets="all",
                           analysis_tokens=(10_000, 30_000), paper_l1_coeff=1e-3, l1_decnorm_coeff=1e-3,
                           topk_k=8, density_bins_at=128),
    "default": ScalingConfig(),
    "paper": ScalingConfig(recipes=("paper", "l1_decnorm", "topk"), sizes=(1024, 2048, 4096, 8192, 16384),
                           budgets=(1 << 22, 1 << 24, 1 << 26, 1 << 28), paper_budgets=None,
                           analysis_tokens=(1 << 20, 1 << 22, 1 << 24),
                           density_bins_at=4096),
}


def get_scaling_preset(name: str) -> ScalingConfig:
    if name not in SCALING_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(SCALING_PRESETS)}")
    return SCALING_PRESETS[name]


def recipe_config(cfg: Config, sc: ScalingConfig, recipe: str, stored_analysis: int | None = None) -> Config:
    """The pipeline config of one recipe's families: all sizes, snapshots at every budget but the last.

    ``stored_analysis``: tokens of the analysis activation store (the largest analysis size measured
    from memory; default the largest of the grid).
    """
    # the recipe's own schedule over the whole run; budgets are snapshots of it
    budgets = sc.budgets_for(recipe)
    d = {"sizes": tuple(sc.sizes), "recipe": recipe, "n_tokens": budgets[-1],
         "snapshot_tokens": tuple(budgets[:-1]), "l1_warmup_tokens": None, "lr_decay_frac": None}
    if recipe == "topk":
        d["k"] = sc.topk_k
    else:
        d["l1_coeff"] = sc.l1_decnorm_coeff if recipe == "l1_decnorm" else sc.paper_l1_coeff
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


# ------------------------------------------------------------------------------------------------
# One grid point
# ------------------------------------------------------------------------------------------------

def paper_counted(counts: np.ndarray, n_tokens: int, ultralow_density: float) -> np.ndarray:
    """The paper's exclusion: alive and not ultralow density (``counts / n_tokens >= ultralow_density``)."""
    counts = np.asarray(counts)
    return (counts > 0) & (counts / n_tokens >= ultralow_density)


def _corr_block(corr: np.ndarray, mask: np.ndarray) -> dict:
    sel = mask & np.isfinite(corr)
    v = corr[sel]
    if not len(v):
        return {"n": 0, "median": None, "mean": None, "frac_gt_0.5": None, "frac_gt_0.7": None}
    return {"n": int(len(v)), "median": float(np.median(v)), "mean": float(np.mean(v)),
            "frac_gt_0.5": float(np.mean(v > 0.5)), "frac_gt_0.7": float(np.mean(v > 0.7))}


def density_curve(density: np.ndarray, corr: np.ndarray, edges=None) -> list[dict]:
    """Median best-match correlation per log10-density bin (half-decade bins): which units are universal."""
    edges = np.arange(-7.0, 0.01, 0.5) if edges is None else edges
    ld = np.log10(np.clip(density, 1e-12, None))
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (ld >= lo) & (ld < hi) & np.isfinite(corr) & (density > 0)
        if sel.any():
            rows.append({"log10_density_lo": float(lo), "n": int(sel.sum()),
                         "median_corr": float(np.median(corr[sel])), "mean_corr": float(np.mean(corr[sel]))})
    return rows


def universality_figures(FA, FB, ultralow_density: float, shuffle_seed: int = 0) -> dict:
    """Max activation correlation of A's units with B's over the same tokens, with its chance level.

    ``FA: [n_tokens, n_a]``, ``FB: [n_tokens, n_b]`` (CSR or dense). Returns the per-unit arrays
    (``corr``, ``chance``, ``counts``) and the summaries over the ``paper``-counted and all alive units.
    """
    A, B = matching.prepare(FA, "acts A"), matching.prepare(FB, "acts B")  # column statistics once
    corr = matching.max_correlation(A, B, k=1, dtype=np.float32).value[:, 0].astype(np.float64)
    chance = matching.shuffled_baseline(A, B, seed=shuffle_seed, k=1, dtype=np.float32).value[:, 0].astype(np.float64)
    return summarize_units(corr, chance, A.nnz, A.n_tokens, ultralow_density)


def summarize_units(corr: np.ndarray, chance: np.ndarray, counts: np.ndarray, n_tok: int,
                    ultralow_density: float) -> dict:
    """The figures of :func:`universality_figures` from per-unit best-match ``corr [n_a]``, ``chance [n_a]``
    and firing ``counts [n_a]`` over ``n_tok`` tokens (from memory or from a stream)."""
    counts = np.asarray(counts)
    alive = counts > 0
    counted = paper_counted(counts, n_tok, ultralow_density)
    return {
        "corr": corr, "chance": chance, "counts": counts,
        "paper": _corr_block(corr, counted), "all_alive": _corr_block(corr, alive),
        "chance_paper_median": _corr_block(chance, counted)["median"],
        "chance_all_alive_median": _corr_block(chance, alive)["median"],
        "n_dead": int((~alive).sum()), "n_ultralow": int((alive & ~counted).sum()),
    }


def _flat(prefix: str, block: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in block.items()}


# ------------------------------------------------------------------------------------------------
# The grid
# ------------------------------------------------------------------------------------------------

def _neuron_baseline(cfg: Config, n_t: int, cache: dict, progress: bool) -> dict:
    from . import pipeline as P

    if n_t in cache:
        return cache[n_t]
    sa = P.get_acts(cfg, cfg.seed_a, "analysis", progress)
    sb = P.get_acts(cfg, cfg.seed_b, "analysis", progress)
    # CSR [n_t, d_mlp] float32: the neurons are ~3% nonzero, so the matcher's sparse path, never densified
    NA, NB = sa.head_csr(n_t), sb.head_csr(n_t)
    fig = universality_figures(NA, NB, ultralow_density=0.0, shuffle_seed=cfg.analysis.shuffle_seed)
    density = fig["counts"] / n_t
    out = {"figures": {k: fig[k] for k in ("paper", "all_alive", "chance_all_alive_median", "n_dead")},
           "density_curve": density_curve(density, fig["corr"])}
    cache[n_t] = out
    return out


_LEAD_COLUMNS = ["id", "recipe", "n_features", "sae_tokens_budget", "sae_tokens", "analysis_tokens",
                 "features_paper_median", "features_all_alive_median", "neurons_median", "chance_paper_median",
                 "features_paper_n", "features_all_alive_n", "dead_frac_a", "ultralow_frac_a", "l0_a",
                 "loss_recovered_zero_a", "loss_recovered_mean_a", "fvu_a"]


def point_id(recipe: str, n: int, budget: int, n_t: int) -> str:
    return f"{recipe}-n{n}-t{budget}-a{n_t}"


def run_scaling(cfg: Config, sc: ScalingConfig, out: str | Path, progress: bool = True,
                log=print, report_only: bool = False, only: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Train (or reuse) every family of the grid, measure every point, return the table.

    Each finished point is written to ``out/points/<id>.json`` at once; a point whose file exists with
    the same key (config, inputs, code version) is read back, not recomputed. ``report_only``: train
    and measure nothing, return the points finished so far (e.g. while the grid runs elsewhere).
    ``only``: shell-style patterns of point ids (``{recipe}-n{size}-t{budget}-a{analysis tokens}``);
    only the unfinished points matching one are measured, the others are read back if finished.
    """
    from . import pipeline as P
    from .report.common import command_line, git_revision

    out = Path(out)
    (out / "points").mkdir(parents=True, exist_ok=True)
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
    rows = []
    revision = {"git_revision": git_revision(), "command": command_line()}
    for recipe in sc.recipes:
        cfg_r = recipe_config(cfg, sc, recipe, stored[-1] if stored else None)
        fams = {}
        for seed in (cfg.seed_a, cfg.seed_b):
            t0 = time.perf_counter()
            if report_only:  # only the key is needed to recognise finished points
                fams[seed] = P.family_artifact(cfg_r, P.get_acts(cfg_r, seed, progress=progress))
                continue
            fams[seed] = P.get_family(cfg_r, seed, progress)
            log(f"[scaling] {recipe}: family of LM seed {seed} ready ({time.perf_counter() - t0:.0f} s)")
        stream_todo: dict[int, list] = {n_t: [] for n_t in streamed}
        for budget, step in budget_steps(cfg_r, sc):
            for n in sc.sizes:
                todo = []
                keys = {}
                for n_t in _analysis_sizes_at(sc, recipe, budget, streamed):
                    pid = point_id(recipe, n, budget, n_t)
                    # only what a point's figures depend on (not, e.g., the universality study's min_count)
                    analysis = {"ultralow_density": cfg.analysis.ultralow_density, "shuffle_seed": cfg.analysis.shuffle_seed}
                    if n_t in stream_todo:  # what the text and the chance level depend on
                        analysis.update(extra_packages=list(cfg.analysis.extra_packages),
                                        stream_chunk=STREAM_CHUNK_TOKENS)
                    keys[n_t] = stable_hash({"dict": cfg_r.dict.key_dict(), "analysis": analysis,
                                             "fam_a": fams[cfg.seed_a].key, "fam_b": fams[cfg.seed_b].key,
                                             "n": n, "step": step, "n_t": n_t, "v": POINT_VERSION})
                    f = out / "points" / f"{pid}.json"
                    if f.is_file():
                        try:
                            row = json.loads(f.read_text())
                            if row.get("key") == keys[n_t]:
                                rows.append(row)
                                continue
                        except ValueError:
                            pass  # a torn file: recompute
                    if not selected(pid):
                        continue
                    if n_t in stream_todo:
                        stream_todo[n_t].append((n, budget, step, keys[n_t]))
                    else:
                        todo.append(n_t)
                if not todo or report_only:
                    continue
                rows.extend(_measure(cfg, cfg_r, sc, recipe, n, budget, step, todo, keys, fams, neuron_cache,
                                     out, revision, progress, log))
        for n_t, items in stream_todo.items():
            if items and not report_only:
                rows.extend(_measure_stream(cfg, cfg_r, sc, recipe, n_t, n_split, items, fams, out, revision,
                                            progress, log))
    df = pd.DataFrame(rows)
    # the same column order whether a point was just measured or read back from its (sorted) JSON
    lead = [c for c in _LEAD_COLUMNS if c in df.columns]
    df = df[lead + sorted(c for c in df.columns if c not in lead)]
    order = {r: i for i, r in enumerate(sc.recipes)}
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

    ids = [point_id(r, n, b, n_t) for r in sc.recipes for b in sc.budgets_for(r) for n in sc.sizes
           for n_t in _analysis_sizes_at(sc, r, b, streamed)]
    for pat in only:
        if not any(fnmatchcase(i, pat) for i in ids):
            raise ConfigError(f"--only {pat!r} matches no point of this grid; point ids look like {ids[0]!r} "
                              f"(recipe-n<size>-t<SAE tokens>-a<analysis tokens>, tokens in full)")
    return lambda pid: any(fnmatchcase(pid, pat) for pat in only)


def _measure(cfg, cfg_r, sc, recipe, n, budget, step, todo, keys, fams, neuron_cache, out, revision,
             progress, log) -> list[dict]:
    from . import pipeline as P

    t0 = time.perf_counter()
    fs = {s: P.get_features(cfg_r, s, n, step, progress) for s in (cfg.seed_a, cfg.seed_b)}
    FA_all, FB_all = fs[cfg.seed_a].acts(), fs[cfg.seed_b].acts()
    t_feat = time.perf_counter() - t0
    tokens, train_s = _budget_tokens(cfg_r, fams[cfg.seed_a], step)
    rows = []
    for n_t in todo:
        t1 = time.perf_counter()
        fig = universality_figures(FA_all[:n_t], FB_all[:n_t], cfg.analysis.ultralow_density,
                                   cfg.analysis.shuffle_seed)
        neur = _neuron_baseline(cfg, n_t, neuron_cache, progress)
        row = {
            "id": point_id(recipe, n, budget, n_t), "key": keys[n_t], **revision,
            "recipe": recipe, "n_features": n, "sae_tokens_budget": budget, "sae_tokens": int(tokens),
            "snapshot_step": step, "analysis_tokens": int(n_t),
            **_flat("features_paper", fig["paper"]), **_flat("features_all_alive", fig["all_alive"]),
            "chance_paper_median": fig["chance_paper_median"], "chance_all_alive_median": fig["chance_all_alive_median"],
            **_flat("neurons", neur["figures"]["all_alive"]),
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
        if n == sc.density_bins_at:
            row["density_curve_features"] = density_curve(fig["counts"] / n_t, fig["corr"])
            row["density_curve_neurons"] = neur["density_curve"]
        row["matching_s"] = time.perf_counter() - t1
        rows.append(_save_point(out, row, log))
    return rows


#: tokens per chunk of a streamed analysis set (also the span of its shuffled chance level)
STREAM_CHUNK_TOKENS = 1 << 20


def _measure_stream(cfg, cfg_r, sc, recipe, n_t, n_split, items, fams, out, revision, progress, log) -> list[dict]:
    """Every point of ``items`` (``(n, budget, step, key)``) on ``n_t`` analysis tokens in one streaming pass."""
    import torch

    from . import pipeline as P
    from .analysis_stream import stream_universality
    from .trainer import resolve_matmul_dtype

    t0 = time.perf_counter()
    tokens = P.analysis_tokens(cfg, n_t, progress)
    lms = {s: P.get_lm(cfg, s, progress) for s in (cfg.seed_a, cfg.seed_b)}
    pairs = {}
    for n, budget, step, _ in items:
        pairs[point_id(recipe, n, budget, n_t)] = tuple(fams[s].sae(n, step) for s in (cfg.seed_a, cfg.seed_b))
    log(f"[scaling] {recipe}: streaming {len(tokens):,} analysis tokens ({min(n_t, n_split):,} from the split, "
        f"{max(0, len(tokens) - n_split):,} from package sources) through {len(pairs)} dictionary pairs ...")
    mm = resolve_matmul_dtype(cfg_r.dict.matmul_dtype, torch.device(cfg.device))
    res, timing = stream_universality(lms[cfg.seed_a].model(cfg.device), lms[cfg.seed_b].model(cfg.device), tokens,
                                      pairs, chunk_tokens=STREAM_CHUNK_TOKENS, shuffle_seed=cfg.analysis.shuffle_seed,
                                      matmul_dtype=mm, device=cfg.device, progress=progress)
    pass_s = time.perf_counter() - t0
    neur = res["neurons"]
    neur_fig = summarize_units(neur.corr, neur.chance, neur.counts, neur.n_tokens, 0.0)
    rows = []
    for n, budget, step, key in items:
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
        if n == sc.density_bins_at:
            row["density_curve_features"] = density_curve(r.counts / r.n_tokens, r.corr)
            row["density_curve_neurons"] = density_curve(neur.counts / neur.n_tokens, neur.corr)
        rows.append(_save_point(out, row, log))
    return rows


def _save_point(out: Path, row: dict, log) -> dict:
    """Write a finished point at once (the grid resumes from these files) and log its figures."""
    atomic_write_json(out / "points" / f"{row['id']}.json", row)
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
