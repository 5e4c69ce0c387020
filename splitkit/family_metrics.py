"""The metrics of every dictionary of one family, read from (or built into) the pipeline's cache.

    fm = get_family_metrics(cfg, seed=0)          # trains / evaluates only what is not cached yet
    fm.stats_by_size[4096]["fvu"], fm.train_summary["tokens"]

The numbers are the features stage's ``stats.json`` (``pipeline.get_features``), so a study that
reports a family and one that analyses its dictionaries read the very same metrics. Writing files is
left to :mod:`splitkit.report.dictionaries`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import pipeline
from .config import Config


@dataclass(frozen=True)
class FamilyMetrics:
    """Metrics of the family of dictionaries trained on the MLP of LM ``seed``.

    ``stats_by_size``: n_features -> that dictionary's metrics (``FeatureSet.stats``: mse, fvu, l0,
    loss_recovered_*, loss_*, dead_frac, ultralow_frac, log10_density_hist, ...), in ascending size.
    ``train_summary``: the family's ``train_summary.json`` (trainer config, tokens, tokens/s, and
    per-dictionary records including per-step logs).
    """

    seed: int
    family_key: str
    family_folder: Path
    stats_by_size: dict[int, dict]
    train_summary: dict


def copy_figures(cfg: Config, fs, W_dec) -> dict:
    """One dictionary's in-dictionary twin statistics (``analyses.universality.redundancy_block``:
    activation twins over at most the first ``TWIN_TOKENS`` analysis tokens, decoder twins), the shares
    over the features the paper counts."""
    import numpy as np

    from .analyses.universality import TWIN_TOKENS, counted_mask, redundancy_block

    F = fs.acts()
    counts = np.asarray(F.getnnz(axis=0))
    mask = counted_mask(counts, F.shape[0], cfg.analysis.ultralow_density, cfg.analysis.min_count)
    red, _ = redundancy_block(F, W_dec, counts, mask, min(F.shape[0], TWIN_TOKENS))
    keys = ("twin_median_act_corr", "twin_share_act_0.9", "twin_median_dec_cos", "twin_share_dec_0.9",
            "n_clusters_act_0.9", "n_clusters_dec_0.9", "n_twin_tokens")
    return {k: red.get(k) for k in keys}


def get_family_metrics(cfg: Config, seed: int, progress: bool = True) -> FamilyMetrics:
    """Every size of ``cfg.dict.sizes`` evaluated on LM ``seed``'s analysis and validation tokens.

    Builds whatever is missing (the family itself included) through the cached pipeline; a family
    already trained, e.g. by ``torchrun -m studies.dictionaries``, is only read.
    """
    fam = pipeline.get_family(cfg, seed, progress)
    stats = {}
    for n in sorted(set(fam.sizes)):
        fs = pipeline.get_features(cfg, seed, n, progress=progress)
        stats[n] = {**fs.stats, **copy_figures(cfg, fs, fam.sae(n).W_dec.detach().cpu().numpy())}
    return FamilyMetrics(seed=seed, family_key=fam.key, family_folder=fam.folder, stats_by_size=stats,
                         train_summary=fam.train_summary)
