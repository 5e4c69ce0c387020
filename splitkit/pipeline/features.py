"""Feature activations of one dictionary over the analysis tokens, and its metrics (loss recovered,
L0, density) on the validation split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import atomic_write_json
from ..config import Config
from .acts import get_acts
from .core import VERSIONS, _cache, _claim, _say, read_artifact_file
from .families import get_family
from .lms import get_lm
from .tokens import get_tokens


@dataclass
class FeatureSet:
    """Feature activations of one dictionary over the analysis tokens, with its metrics."""

    folder: Path
    key: str

    def acts(self):
        import scipy.sparse as sp

        return read_artifact_file(self.folder / "features.npz", sp.load_npz)

    @property
    def stats(self) -> dict:
        return json.loads((self.folder / "stats.json").read_text())

    @property
    def counts(self) -> np.ndarray:
        return read_artifact_file(self.folder / "counts.npy", np.load)


def get_features(cfg: Config, seed: int, n: int, snapshot_step: int | None = None, progress: bool = True) -> FeatureSet:
    """Feature activations of dictionary ``n`` of LM ``seed`` over the analysis split, plus its metrics."""
    import scipy.sparse as sp

    from ..features import feature_acts, firing_counts
    from ..metrics import density_stats
    from ..precision import matmul_dtype

    fam = get_family(cfg, seed, progress)
    store = get_acts(cfg, seed, "analysis", progress)
    train_store = get_acts(cfg, seed, progress=progress)
    # the encoder GEMM in the precision the dictionaries were trained with (bf16 where it is fast)
    mm_dtype = matmul_dtype(cfg.dict.matmul_dtype, cfg.device)
    art = _cache(cfg).artifact("features", {"n": n, "snapshot_step": snapshot_step, "eval_tokens": cfg.lm.eval_tokens,
                                            "ultralow_density": cfg.analysis.ultralow_density,
                                            "matmul_dtype": str(mm_dtype).replace("torch.", "")},
                               {"dicts": fam.key, "analysis_acts": store.folder.name}, VERSIONS["features"])
    if not _claim(art):
        work = art.begin(resume=False)
        sae = fam.sae(n, snapshot_step, device=cfg.device)
        _say(f"feature activations of {fam.sae_id(n)}{'' if snapshot_step is None else f' @step {snapshot_step}'} "
             f"over {len(store):,} analysis tokens ...")
        F = feature_acts(sae, store, device=cfg.device, progress=progress, matmul_dtype=mm_dtype)
        sp.save_npz(work / "features.npz", F, compressed=False)
        counts = firing_counts(F)
        np.save(work / "counts.npy", counts)
        ev = _evaluate(cfg, seed, sae, train_store, progress)
        stats = {"sae_id": fam.sae_id(n), "n_features": n, "snapshot_step": snapshot_step, **ev,
                 **density_stats(counts, len(store), cfg.analysis.ultralow_density),
                 "l0_analysis": float(F.nnz / len(store))}
        atomic_write_json(work / "stats.json", stats)
        art.seal()
    return FeatureSet(art.path, art.key)


def _evaluate(cfg: Config, seed: int, sae, train_store, progress: bool) -> dict:
    """Reconstruction and loss-recovered metrics of ``sae`` in LM ``seed`` on the validation split."""
    import torch

    from ..metrics import evaluate_sae

    lm = get_lm(cfg, seed, progress)
    data = get_tokens(cfg, progress)
    return evaluate_sae(lm.model(cfg.device), sae, data.tokens("val"), cfg.lm.eval_tokens,
                        torch.from_numpy(train_store.mean_acts), device=cfg.device)


def sae_metrics(cfg: Config, seed: int, n: int, snapshot_step: int | None = None, progress: bool = True) -> dict:
    """``evaluate_sae`` figures (FVU, L0, loss recovered, ...) of dictionary ``n`` of LM ``seed``, cached.

    The same numbers as in ``get_features(...).stats``, for callers that never build the
    analysis-set feature activations (the streamed analysis sets).
    """
    fam = get_family(cfg, seed, progress)
    train_store = get_acts(cfg, seed, progress=progress)
    art = _cache(cfg).artifact("sae_eval", {"n": n, "snapshot_step": snapshot_step, "eval_tokens": cfg.lm.eval_tokens},
                               {"dicts": fam.key}, VERSIONS["sae_eval"])
    if not _claim(art):
        work = art.begin(resume=False)
        ev = _evaluate(cfg, seed, fam.sae(n, snapshot_step, device=cfg.device), train_store, progress)
        atomic_write_json(work / "stats.json", {"sae_id": fam.sae_id(n), "n_features": n,
                                                "snapshot_step": snapshot_step, **ev})
        art.seal()
    return json.loads((art.path / "stats.json").read_text())
