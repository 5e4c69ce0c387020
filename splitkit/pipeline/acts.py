"""The activation stage: an LM's MLP activations over one split, stored sparse."""

from __future__ import annotations

from ..config import Config
from .core import VERSIONS, _cache, _claim, _say
from .lms import get_lm
from .tokens import get_tokens


def get_acts(cfg: Config, seed: int, split: str | None = None, progress: bool = True):
    """The activation store of LM ``seed`` over ``split`` (default: the dictionaries' training split).

    The analysis split is taken in order (first ``analysis.n_tokens`` tokens) so both runs see the
    same tokens; training stores are a seeded random subset of windows, the same for A and B.
    """
    from ..activations import ActivationStore, harvest, window_starts

    split = split or cfg.acts.split
    lm = get_lm(cfg, seed, progress)
    data = get_tokens(cfg, progress)
    n_tokens = cfg.analysis.n_tokens if split == "analysis" else cfg.acts.n_tokens
    sub = {**cfg.acts.to_dict(), "split": split, "n_tokens": n_tokens}
    art = _cache(cfg).artifact("acts", sub, {"lm": lm.key}, VERSIONS["acts"])
    if not _claim(art):
        toks = data.tokens(split)
        starts = window_starts(len(toks), cfg.model.n_ctx, n_tokens, seed=None if split == "analysis" else 1234)
        _say(f"harvesting MLP activations of LM seed {seed} on {len(starts) * cfg.model.n_ctx:,} {split} tokens ...")
        work = art.begin(resume=False)
        harvest(lm.model(cfg.device), toks, starts, work, cfg.acts.shard_tokens, cfg.acts.dtype,
                device=cfg.device, progress=progress)
        art.seal()
    return ActivationStore(art.path)
