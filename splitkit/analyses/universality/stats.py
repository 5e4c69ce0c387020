"""Summaries of best-match correlation vectors: which units count (the paper's exclusions), medians
with bootstrap intervals, and the density bins the reports draw."""

from __future__ import annotations

import numpy as np
import pandas as pd


def counted_mask(counts: np.ndarray, n_tokens: int, ultralow_density: float, min_count: int = 1) -> np.ndarray:
    """The features the paper counts: alive (at least ``min_count`` firings, 1 by default) and not of
    ultralow density (``counts / n_tokens >= ultralow_density``). ``counts: [n]`` firings over
    ``n_tokens`` analysis tokens -> bool ``[n]``."""
    counts = np.asarray(counts)
    return (counts >= max(1, min_count)) & (counts / n_tokens >= ultralow_density)


#: log10-density bin edges of every per-density view: half decades from 1e-7 (one firing in 10M tokens) to 1
DENSITY_EDGES = np.arange(-7.0, 0.01, 0.5)


def _density_rows(density: np.ndarray, corr: np.ndarray) -> list[dict]:
    ld = np.log10(np.clip(density, 1e-12, None))
    rows = []
    for lo, hi in zip(DENSITY_EDGES[:-1], DENSITY_EDGES[1:]):
        sel = (ld >= lo) & (ld < hi) & np.isfinite(corr) & (density > 0)
        if sel.any():
            rows.append({"log10_density_lo": float(lo), "log10_density_hi": float(hi), "n": int(sel.sum()),
                         "median_corr": float(np.median(corr[sel])), "mean_corr": float(np.mean(corr[sel]))})
    return rows


def density_bins(density: np.ndarray, corr: np.ndarray) -> pd.DataFrame:
    """Median best-match correlation per log10-density bin (``DENSITY_EDGES``): which units are universal.

    ``density: [n]`` firing share, ``corr: [n]`` best-match correlation (NaN: left out).
    """
    return pd.DataFrame(_density_rows(density, corr))


def density_curve(density: np.ndarray, corr: np.ndarray) -> list[dict]:
    """:func:`density_bins` as JSON rows (lower edge, count, median, mean), as a scaling point keeps them."""
    return [{k: r[k] for k in ("log10_density_lo", "n", "median_corr", "mean_corr")}
            for r in _density_rows(density, corr)]


def corr_stats(corr: np.ndarray, mask: np.ndarray) -> dict:
    """Count, median, mean and shares above 0.5 and 0.7 of best-match ``corr [n]`` over ``mask [n]``
    (NaN entries left out); None figures when nothing is left."""
    sel = mask & np.isfinite(corr)
    v = corr[sel]
    if not len(v):
        return {"n": 0, "median": None, "mean": None, "frac_gt_0.5": None, "frac_gt_0.7": None}
    return {"n": int(len(v)), "median": float(np.median(v)), "mean": float(np.mean(v)),
            "frac_gt_0.5": float(np.mean(v > 0.5)), "frac_gt_0.7": float(np.mean(v > 0.7))}


def summarize_units(corr: np.ndarray, chance: np.ndarray, counts: np.ndarray, n_tok: int,
                    ultralow_density: float) -> dict:
    """The figures of :func:`universality_figures` from per-unit best-match ``corr [n_a]``, ``chance [n_a]``
    and firing ``counts [n_a]`` over ``n_tok`` tokens (from memory or from a stream)."""
    counts = np.asarray(counts)
    alive = counts > 0
    counted = counted_mask(counts, n_tok, ultralow_density)
    return {
        "corr": corr, "chance": chance, "counts": counts,
        "paper": corr_stats(corr, counted), "all_alive": corr_stats(corr, alive),
        "chance_paper_median": corr_stats(chance, counted)["median"],
        "chance_all_alive_median": corr_stats(chance, alive)["median"],
        "n_dead": int((~alive).sum()), "n_ultralow": int((alive & ~counted).sum()),
    }


def bootstrap_median(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of the median of ``values [n]`` (NaN left out): resample the
    units with replacement ``n_boot`` times (seeded). Returns ``{"median", "lo", "hi", "n_boot", "level"}``."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"median": None, "lo": None, "hi": None, "n_boot": n_boot, "level": level}
    rng = np.random.default_rng(seed)
    meds = np.empty(n_boot)
    for s0 in range(0, n_boot, 100):  # [100, n] index blocks: bounded memory
        e = min(n_boot, s0 + 100)
        meds[s0:e] = np.median(v[rng.integers(0, v.size, (e - s0, v.size))], axis=1)
    a = (1 - level) / 2
    return {"median": float(np.median(v)), "lo": float(np.quantile(meds, a)), "hi": float(np.quantile(meds, 1 - a)),
            "n_boot": int(n_boot), "level": float(level)}


def bootstrap_difference(x: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of ``median(x) - median(y)``, ``x`` and ``y`` resampled independently."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not x.size or not y.size:
        return {"diff": None, "lo": None, "hi": None, "n_boot": n_boot, "level": level}
    rng = np.random.default_rng(seed)
    d = np.empty(n_boot)
    for s0 in range(0, n_boot, 100):
        e = min(n_boot, s0 + 100)
        d[s0:e] = (np.median(x[rng.integers(0, x.size, (e - s0, x.size))], axis=1)
                   - np.median(y[rng.integers(0, y.size, (e - s0, y.size))], axis=1))
    a = (1 - level) / 2
    return {"diff": float(np.median(x) - np.median(y)), "lo": float(np.quantile(d, a)),
            "hi": float(np.quantile(d, 1 - a)), "n_boot": int(n_boot), "level": float(level)}


def _med(v) -> float | None:
    v = np.asarray(v, np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def neuron_density_stats(counts: np.ndarray, n_tok: int, ultralow_density: float) -> dict:
    """Dead / ultralow / counted numbers of one basis under the one exclusion rule (:func:`counted_mask`)."""
    counts = np.asarray(counts)
    alive = counts > 0
    counted = counted_mask(counts, n_tok, ultralow_density)
    return {"n": int(counts.size), "n_dead": int((~alive).sum()), "n_ultralow": int((alive & ~counted).sum()),
            "n_counted": int(counted.sum()), "ultralow_below_one_firing": bool(ultralow_density * n_tok <= 1.0)}
