"""The feature-splitting study's config (``studies.splitting``) and its presets."""

from __future__ import annotations

from dataclasses import dataclass

from .base import ConfigError, _Section


@dataclass(frozen=True)
class SplittingConfig(_Section):
    """The splitting study: which family, how links are made, and the map's settings.

    The family is one pass of the trainer per run over ``Config.dict`` with ``sizes`` replacing its
    sizes, so the study reuses the universality study's LMs and activation stores (their keys hold no
    dictionary setting). Feature activations are taken over the first ``analysis_tokens`` tokens of
    the analysis split (a store of its own, harvested once).
    """

    sizes: tuple[int, ...] = (512, 1024, 2048, 4096)
    # 1M analysis tokens: a feature of density 1e-4 fires ~100 times, enough for a masked cosine;
    # links need no more (the correlation-based universality figures use the 4M-token store)
    analysis_tokens: int = 1_000_000
    threshold: float = 0.4  # the paper's masked-cosine link
    # pairs sharing fewer tokens are no candidates: on one or two shared tokens the masked cosine is
    # that token's share of a norm and passes 0.4 by chance (docs/splitting.md has the measured null)
    min_cofire: int = 3
    k: int = 16  # parents kept per child before the threshold
    persist_cos: float = 0.8
    split_cover: float = 0.5
    twin_threshold: float = 0.9  # in-dictionary activation correlation that makes two features one node
    twin_k: int = 8
    n_shuffles: int = 20  # shuffled baselines of split universality
    null_children: int | None = 4096  # children sampled for the shuffled null of each step (None: all)
    null_min_cofire: tuple[int, ...] = (1, 2, 3)  # the null is also reported at these, to justify min_cofire
    match_k: int = 8
    umap_neighbors: int = 15
    umap_min_dist: float | None = None  # None: the paper's (0.05; 0.01 with three or more sizes)
    cluster_dims: int = 10
    min_cluster_size: int = 3
    umap_seed: int = 0
    n_families: int = 10  # families listed (and drawn) in the report
    n_top: int = 5  # top activating / promoted tokens per node
    n_contexts: int = 3  # context snippets per node of the followed family
    context_tokens: int = 12  # tokens of context before the activating one

    def __post_init__(self):
        for name in ("sizes", "null_min_cofire"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        s = self.sizes
        if len(s) < 2 or any((not isinstance(x, int)) or x <= 0 for x in s) or list(s) != sorted(set(s)):
            raise ConfigError(f"splitting.sizes must be two or more increasing positive integers, got {list(s)}")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"splitting.threshold must be in (0, 1], got {self.threshold}")
        if not 0 < self.twin_threshold <= 1:
            raise ConfigError(f"splitting.twin_threshold must be in (0, 1], got {self.twin_threshold}")
        for name in ("min_cofire", "k", "analysis_tokens", "n_shuffles", "match_k", "umap_neighbors",
                     "min_cluster_size", "twin_k", "n_families", "n_top"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"splitting.{name} must be a positive integer, got {v!r}")
        if self.null_children is not None and self.null_children < 1:
            raise ConfigError(f"splitting.null_children must be None (all) or >= 1, got {self.null_children}")


SPLITTING_PRESETS = {
    "smoke": SplittingConfig(sizes=(32, 64, 128), analysis_tokens=30_000, min_cofire=2, n_shuffles=5,
                             null_children=None, umap_neighbors=10, n_families=4, n_contexts=2, context_tokens=6),
    "default": SplittingConfig(),
    "paper": SplittingConfig(sizes=(512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
                             analysis_tokens=8_000_000),
}


def get_splitting_preset(name: str) -> SplittingConfig:
    if name not in SPLITTING_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(SPLITTING_PRESETS)}")
    return SPLITTING_PRESETS[name]
