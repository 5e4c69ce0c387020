"""The logit-effect stage: each feature's direct effect on the next-token logits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import atomic_write_json
from ..config import Config
from .core import VERSIONS, PipelineError, _cache, _claim
from .families import get_family
from .lms import get_lm


@dataclass
class LogitEffects:
    """Direct logit effects of one dictionary's features (or of the neurons) of LM ``seed``."""

    folder: Path
    key: str

    @property
    def info(self) -> dict:
        return json.loads((self.folder / "info.json").read_text())

    def matrix(self) -> np.ndarray:
        """float32 ``[n, vocab]``; only kept up to ``effects.DENSE_LIMIT`` entries (else use :meth:`top`)."""
        f = self.folder / "effects.npy"
        if not f.is_file():
            raise PipelineError(f"logit effects {self.info['shape']} are kept as top-{self.info['k']} rows only; "
                                "use LogitEffects.top()")
        return np.load(f)

    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's top-k by magnitude: int32 ``index [n, k]``, float32 ``value [n, k]``."""
        if (self.folder / "effects.npy").is_file():
            from ..effects import top_of

            return top_of(self.matrix(), self.info["k"])
        return np.load(self.folder / "top_index.npy"), np.load(self.folder / "top_value.npy")


def get_logit_effects(cfg: Config, seed: int, n: int | None = None, snapshot_step: int | None = None,
                      progress: bool = True, k: int = 256) -> LogitEffects:
    """Logit effects ``[n, vocab]`` of dictionary ``n`` of LM ``seed`` (``n=None``: its ``d_mlp`` neurons).

    Decoder rows through the LM's direct path (MLP output weights, final LN, unembedding); the whole
    matrix while it has at most ``effects.DENSE_LIMIT`` entries, else each row's top ``k`` by magnitude.
    """
    from ..effects import DENSE_LIMIT, logit_effects, top_effects

    lm = get_lm(cfg, seed, progress)
    deps = {"lm": lm.key}
    if n is not None:
        fam = get_family(cfg, seed, progress)
        deps["dicts"] = fam.key
    art = _cache(cfg).artifact("effects", {"n": n, "snapshot_step": snapshot_step, "k": k}, deps, VERSIONS["effects"])
    if not _claim(art):
        work = art.begin(resume=False)
        path = {name: w.numpy() for name, w in lm.model().direct_path().items()}
        W_dec = (np.eye(cfg.model.d_mlp, dtype=np.float32) if n is None
                 else fam.sae(n, snapshot_step).W_dec.detach().numpy())  # [n, d_mlp]
        shape = [int(W_dec.shape[0]), int(path["W_U"].shape[1])]
        if shape[0] * shape[1] <= DENSE_LIMIT:
            np.save(work / "effects.npy", logit_effects(W_dec, path["W_out"], path["W_U"], path["ln_scale"]))
        else:
            idx, val = top_effects(W_dec, path["W_out"], path["W_U"], path["ln_scale"], k=k)
            np.save(work / "top_index.npy", idx)
            np.save(work / "top_value.npy", val)
        atomic_write_json(work / "info.json", {"shape": shape, "k": k, "seed": seed, "n": n,
                                               "snapshot_step": snapshot_step})
        art.seal()
    return LogitEffects(art.path, art.key)
