"""The pipeline's config: one frozen section per stage (corpus, tokenizer, model, LM training,
activations, dictionaries, analysis), gathered in :class:`Config`.

Every stage's cache key is a hash of its own section (plus the keys of its inputs), so changing,
say, the SAE learning rate retrains the dictionaries but reuses the language models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .base import ConfigError, _recipe_names, _recipe_uses_k, _Section


@dataclass(frozen=True)
class CorpusConfig(_Section):
    """Where the text comes from and how it is split into documents.

    ``path=None`` means the embedded default: the running interpreter's standard-library sources.
    Otherwise a text file, a folder (files matched by ``glob``), or a ``.jsonl``/``.parquet`` file
    whose ``text_column`` holds the documents.
    """

    path: str | None = None
    glob: str = "**/*.py"
    text_column: str = "text"
    # train / validation / analysis, by document. Analysis gets a large share (about 4.3M tokens of the
    # stdlib's 9.4M): the universality correlations of rare features are noise on a small analysis
    # set, and the LM (3M tokens) and the SAE store (4M) need no more than the train half.
    fractions: tuple[float, float, float] = (0.50, 0.04, 0.46)
    split_seed: int = 0
    max_docs: int | None = None

    def __post_init__(self):
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ConfigError(f"corpus.fractions must be three non-negative numbers summing to 1, got {self.fractions}")


@dataclass(frozen=True)
class TokenizerConfig(_Section):
    # 4096 was the better trade on this CPU: 8192 halved LM throughput for a worse loss per char.
    vocab_size: int = 4096
    min_frequency: int = 2

    def __post_init__(self):
        if not 260 <= self.vocab_size <= 65535:
            raise ConfigError(f"tokenizer.vocab_size must be in [260, 65535], got {self.vocab_size}")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """One-layer transformer as in the paper: residual 128, one attention block, 512 ReLU neurons."""

    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 128

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


@dataclass(frozen=True)
class LMTrainConfig(_Section):
    n_tokens: int = 3_000_000
    batch_size: int = 64  # sequences of n_ctx tokens
    lr: float = 3e-3
    warmup_frac: float = 0.02
    weight_decay: float = 0.05
    dtype: str = "bfloat16"  # autocast dtype for matmuls; master weights stay fp32
    checkpoint_every: int = 200
    eval_tokens: int = 262_144

    def __post_init__(self):
        if self.dtype not in ("bfloat16", "float32"):
            raise ConfigError(f"lm.dtype must be 'bfloat16' or 'float32', got {self.dtype!r}")
        if self.n_tokens <= 0 or self.batch_size <= 0:
            raise ConfigError("lm.n_tokens and lm.batch_size must be positive")


@dataclass(frozen=True)
class ActivationsConfig(_Section):
    """The on-disk store of MLP activations the dictionaries train on."""

    split: str = "train"
    n_tokens: int = 4_000_000  # capped by the split's size
    dtype: str = "float16"
    shard_tokens: int = 1 << 20

    def __post_init__(self):
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"activations.dtype must be 'float16' or 'float32', got {self.dtype!r}")
        if self.split not in ("train", "val", "analysis"):
            raise ConfigError(f"activations.split must be train, val or analysis, got {self.split!r}")


@dataclass(frozen=True)
class DictConfig(_Section):
    """A family of dictionaries trained together on one model's activations."""

    # 2,048 features, 2M tokens: the cheapest configuration we found that meets the quality targets
    # (loss recovered >= 85% on both runs at L0 <= 20) on this CPU (docs/results.md).
    sizes: tuple[int, ...] = (2048,)
    # l1_log (docs/copies.md): l1_decnorm's L1 x decoder-norm penalty left half of each dictionary
    # as near-copies (twins > 0.9: 58% / 46%); a log penalty on f * ||d|| plus a merge of twins every
    # 25 steps brings that under 5% (3.9% / 2.6%) and reconstructs better (96% of the loss at L0 11-14).
    recipe: str = "l1_log"
    n_tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    # lambda of the L1 recipes; None: the recipe's own (``Recipe.default_l1_coeff``: l1_log 1e-3 ->
    # L0 11.2 / 13.8 and 95.9% / 96.4% of the loss recovered on runs A / B at 2048 features, 2M tokens;
    # l1_decnorm 1.8e-3; paper 1.2e-3). The loss averages the squared error over the 512 inputs, so
    # lambda is on that scale.
    l1_coeff: float | None = None
    k: int = 32
    matmul_dtype: str = "auto"  # bf16 GEMMs where the hardware has them (CUDA, AMX/AVX512-BF16), else fp32
    seed: int = 0
    checkpoint_every: int = 250
    snapshot_tokens: tuple[int, ...] = ()
    # Schedule (None: the recipe's own; l1_decnorm warms lambda up over 5% of the run and decays the
    # learning rate over the last 20%). The default replays the first 2M tokens of the scaling grid's
    # 8M-token run: lambda warmed up over 400k tokens, then a constant learning rate.
    l1_warmup_tokens: int | None = 400_000
    lr_decay_frac: float | None = 0.0
    # None: lambda follows the schedule above. A number: each dictionary's lambda is steered during
    # training (from l1_coeff, after the warm-up, frozen over the last 5%) until its mean L0 is this
    # (``train.l0control``); the L1 recipes only (topk's L0 is k).
    target_l0: float | None = None
    # the controller's gain (log lambda per unit of log L0 error and step); None: the trainer's 0.02
    l0_gain: float | None = None

    def __post_init__(self):
        if not self.sizes or any((not isinstance(s, int)) or s <= 0 for s in self.sizes):
            raise ConfigError(f"dict.sizes must be positive integers, got {self.sizes}")
        names = _recipe_names()
        if self.recipe not in names:
            raise ConfigError(f"dict.recipe must be one of {', '.join(names)}, got {self.recipe!r}")
        w, f = self.l1_warmup_tokens, self.lr_decay_frac
        if w is not None and not (isinstance(w, int) and w >= 0):
            raise ConfigError(f"dict.l1_warmup_tokens must be empty (the recipe's own) or >= 0 tokens, got {w!r}")
        if f is not None and not (isinstance(f, (int, float)) and 0 <= f <= 1):
            raise ConfigError(f"dict.lr_decay_frac must be empty (the recipe's own) or in [0, 1], got {f!r}")
        lam = self.l1_coeff
        if lam is not None and not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam > 0):
            raise ConfigError(f"dict.l1_coeff must be empty (the recipe's own) or a positive number, got {lam!r}")
        t = self.target_l0
        if t is not None and not (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 and not _recipe_uses_k(self.recipe)):
            raise ConfigError(f"dict.target_l0 must be empty (fixed lambda) or a mean L0 > 0 for an L1 recipe, got {t!r} "
                              f"with recipe {self.recipe!r}")
        g = self.l0_gain
        if g is not None and not (isinstance(g, (int, float)) and not isinstance(g, bool) and g > 0):
            raise ConfigError(f"dict.l0_gain must be empty (the trainer's 0.02) or a positive number, got {g!r}")

    @property
    def lam(self) -> float | None:
        """lambda in force: ``l1_coeff``, or the recipe's own default when it is unset."""
        if self.l1_coeff is not None:
            return self.l1_coeff
        from ..train.recipes import get_recipe

        return get_recipe(self.recipe).default_l1_coeff

    def key_dict(self) -> dict:
        """``to_dict`` for cache keys: unset schedule fields are left out, so caches keyed before
        these fields existed stay valid; an unset lambda is keyed by the value in force, so leaving
        it to the recipe and naming the same value share one cache entry."""
        d = self.to_dict()
        d["l1_coeff"] = self.lam
        for name in ("l1_warmup_tokens", "lr_decay_frac", "target_l0", "l0_gain"):
            if d[name] is None:
                del d[name]
        return d


@dataclass(frozen=True)
class AnalysisConfig(_Section):
    # analysis tokens the correlations run over (capped by the split: 4.1M on the stdlib); the
    # universality-scaling study shows how the figure settles as this grows
    n_tokens: int = 4_000_000
    top_k: int = 8
    # The paper leaves out dead and ultralow-density features, ultralow meaning fewer than 1 firing in a
    # million tokens; so do we, for features and neurons alike (``analyses.universality.counted_mask``).
    # Where 1e-6 x analysis tokens is under one firing (analysis sets under 1M tokens) every unit that
    # fires at all clears it, and ultralow and dead coincide.
    ultralow_density: float = 1e-6
    # Optionally also leave out features with fewer firings than this (1: only the paper's exclusion).
    # On a small analysis set a feature with a handful of firings has a best-of-n correlation that is
    # mostly noise; raising this trades coverage for resolution.
    min_count: int = 1
    shuffle_seed: int = 0
    # Past the corpus's analysis split, analysis sets continue into the Python sources of these
    # installed packages (held out: the LMs never saw them; ~145 MB, ~40M tokens with the defaults);
    # an empty tuple stops analysis sets at the split. See ``corpus.load_package_documents``.
    extra_packages: tuple[str, ...] = ("torch", "pandas", "scipy", "sklearn", "numba", "numpy", "matplotlib",
                                       "networkx", "pyarrow", "seaborn", "umap", "tqdm")


_SECTIONS = {
    "corpus": CorpusConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "lm": LMTrainConfig,
    "acts": ActivationsConfig,
    "dict": DictConfig,
    "analysis": AnalysisConfig,
}


@dataclass(frozen=True)
class Config(_Section):
    preset: str = "default"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lm: LMTrainConfig = field(default_factory=LMTrainConfig)
    acts: ActivationsConfig = field(default_factory=ActivationsConfig)
    dict: DictConfig = field(default_factory=DictConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    seed_a: int = 0
    seed_b: int = 1
    device: str = "cpu"
    cache_dir: str = ".cache"
    # The LM budget rule (``pipeline.fit_lm_budget``): while an LM of run A or B is not clearly better
    # than a bigram model of its corpus, both are trained again on twice the tokens, at most this many
    # times (3M -> 24M at the default). 0: the budget is lm.n_tokens as given (the smoke preset's, a
    # budget named with --lm-tokens).
    lm_budget_doublings: int = 3

    _SUBSECTIONS = _SECTIONS  # what from_dict builds nested (not a field: no annotation)

    def __post_init__(self):
        d = self.lm_budget_doublings
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6:
            raise ConfigError(f"lm_budget_doublings must be an integer from 0 to 6, got {d!r}")

    def with_overrides(self, **sections: dict) -> "Config":
        """Return a copy with fields of sections replaced, e.g. ``dict={"sizes": (512,)}``."""
        kw = {}
        for name, upd in sections.items():
            if name in _SECTIONS:
                kw[name] = getattr(self, name).replace(**upd)
            else:
                kw[name] = upd
        return dataclasses.replace(self, **kw)
