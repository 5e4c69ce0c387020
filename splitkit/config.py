"""Frozen config dataclasses, one per pipeline stage, gathered in :class:`Config` with named presets.

Every stage's cache key is a hash of its own section (plus the keys of its inputs), so changing,
say, the SAE learning rate retrains the dictionaries but reuses the language models.

Presets:
- ``smoke``: the same code path in seconds, for tests.
- ``default``: a first run on a 2-core CPU (stdlib corpus, two LMs, 2048-feature dictionaries).
- ``paper``: the paper's sizes (512 .. 131072 features); needs a GPU and a larger corpus.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


class ConfigError(ValueError):
    """Bad configuration value; the message says what is allowed."""


def _from_dict(cls, d: dict):
    if not isinstance(d, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        sub = _SECTIONS.get(k) if cls is Config else None
        if sub is not None:
            kw[k] = _from_dict(sub, v)
        else:
            kw[k] = tuple(v) if isinstance(v, list) else v  # JSON has no tuples
    return cls(**kw)


def _recipe_names() -> tuple[str, ...]:
    """The trainer's registered recipes (``splitkit.train.recipes``): the one list of names."""
    from .train.recipes import recipe_names

    return recipe_names()


def _recipe_uses_k(name: str) -> bool:
    """Whether recipe ``name``'s sparsity is TopK's k rather than lambda."""
    from .train.recipes import get_recipe

    return get_recipe(name).uses_k


class _Section:
    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict):
        return _from_dict(cls, d)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


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
        from .train.recipes import get_recipe

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


def _smoke() -> Config:
    return Config(
        preset="smoke",
        corpus=CorpusConfig(max_docs=120, fractions=(0.7, 0.1, 0.2)),
        tokenizer=TokenizerConfig(vocab_size=512),
        model=ModelConfig(d_model=32, n_heads=2, d_mlp=64, n_ctx=32),
        lm=LMTrainConfig(n_tokens=40_000, batch_size=16, lr=3e-3, checkpoint_every=20, eval_tokens=8192),
        acts=ActivationsConfig(n_tokens=60_000, shard_tokens=16_384),
        dict=DictConfig(sizes=(128,), n_tokens=100_000, batch_size=1024, lr=3e-3, l1_coeff=1e-3, checkpoint_every=40,
                        l1_warmup_tokens=None, lr_decay_frac=None),
        analysis=AnalysisConfig(n_tokens=30_000, min_count=3, extra_packages=("tqdm",)),
        lm_budget_doublings=0,  # seconds-long LMs for tests: their budget is what it is
    )


def _default() -> Config:
    return Config()


def _paper() -> Config:
    return Config(
        preset="paper",
        lm=LMTrainConfig(n_tokens=200_000_000, batch_size=256),
        acts=ActivationsConfig(n_tokens=50_000_000),
        dict=DictConfig(sizes=(512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072),
                        n_tokens=400_000_000, batch_size=8192, l1_warmup_tokens=None, lr_decay_frac=None),
        analysis=AnalysisConfig(n_tokens=8_000_000),
        device="cuda",
        lm_budget_doublings=0,  # 200M tokens an LM: a budget to set by hand, not to double
    )


PRESETS = {"smoke": _smoke, "default": _default, "paper": _paper}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


# --- the universality-scaling grid (its own section: not part of ``Config``) ----------------------

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
    l1_log_coeff: float = 1e-3  # the recipe's default (L0 11-14 at 2,048 features, 2M tokens)
    topk_k: int = 16
    density_bins_at: int = 4096  # size whose per-density curve is kept for every point
    # Analysis sets past the corpus's analysis split are streamed (``analysis_stream``): every point
    # costs a pass of its encoders over the whole set (16M tokens: ~5 min per 4096 features and run
    # on the 2-core CPU). "ends" measures them at each recipe's first and last budget (the analysis
    # axis's budget and the most trained), "last" at the last only, "all" at every budget.
    stream_budgets: str = "ends"
    # Fixed-L0 arms: every penalised recipe also trains once per target mean L0, its lambda steered
    # toward it during training (``dict.target_l0``), so each budget's snapshot sits near that L0.
    # Empty: the fixed-lambda grid alone (its ids and cache keys as before these arms existed).
    target_l0s: tuple[float, ...] = ()
    # the controller's gain on these arms: grid runs are short (122-1,953 steps), where the
    # trainer's default 0.02 undershoots by ~8% (docs/recipes.md, "Holding L0 fixed")
    target_l0_gain: float = 0.1

    def __post_init__(self):
        if isinstance(self.target_l0s, list):
            object.__setattr__(self, "target_l0s", tuple(self.target_l0s))
        if any(isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 for t in self.target_l0s) \
                or list(self.target_l0s) != sorted(set(self.target_l0s)):
            raise ConfigError(f"scaling.target_l0s must be increasing positive mean L0s, got {list(self.target_l0s)}")
        if not self.target_l0_gain > 0:
            raise ConfigError(f"scaling.target_l0_gain must be > 0, got {self.target_l0_gain!r}")
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
        bad = [r for r in self.recipes if r not in _recipe_names()]
        if bad:
            raise ConfigError(f"scaling.recipes: unknown recipe(s) {bad}; choose from {', '.join(_recipe_names())}")
        if isinstance(self.paper_budgets, list):
            object.__setattr__(self, "paper_budgets", tuple(self.paper_budgets))
        for name in ("sizes", "budgets", "analysis_tokens") + (("paper_budgets",) if self.paper_budgets else ()):
            v = getattr(self, name)
            if any((not isinstance(x, int)) or x <= 0 for x in v) or list(v) != sorted(set(v)):
                raise ConfigError(f"scaling.{name} must be increasing positive integers, got {list(v)}")

    def arms(self) -> list[tuple[str, str, float | None]]:
        """``(label, recipe, target_l0)`` per grid arm: each recipe at its fixed lambda (label: the
        recipe), then each penalised recipe once per ``target_l0s`` (label ``recipe@L0=16``)."""
        from .train.recipes import get_recipe  # lazily, as _recipe_names does

        out = [(r, r, None) for r in self.recipes]
        for r in self.recipes:
            if not get_recipe(r).uses_k:  # topk's L0 is its k
                out += [(f"{r}@L0={t:g}", r, float(t)) for t in self.target_l0s]
        return out

    def budgets_for(self, recipe: str) -> tuple[int, ...]:
        """The SAE budgets of ``recipe``'s families (the largest ends the run)."""
        return self.paper_budgets if recipe == "paper" and self.paper_budgets else self.budgets

    def l1_coeff_for(self, recipe: str) -> float:
        """lambda of ``recipe``'s families: this section's value for paper, l1_decnorm and l1_log, the
        recipe's own default for any other penalised recipe (matryoshka)."""
        own = {"paper": self.paper_l1_coeff, "l1_decnorm": self.l1_decnorm_coeff, "l1_log": self.l1_log_coeff}
        if recipe in own:
            return own[recipe]
        from .train.recipes import get_recipe  # lazily, as _recipe_names does (recipes fills the registry)

        lam = get_recipe(recipe).default_l1_coeff
        if lam is None:
            raise ConfigError(f"scaling: recipe {recipe!r} has no lambda (it is not penalised)")
        return lam

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


# --- the automaton search (its own section: not part of ``Config``) -------------------------------

def _have_numba() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


@dataclass(frozen=True)
class FSAConfig(_Section):
    """Thresholds and bounds of the automaton search (``splitkit.analyses.fsa``; definitions in its
    module docstring), and what ``analyses.fsa_run.run_fsa`` feeds it. Presets: ``FSA_PRESETS``."""

    min_count: int = 5  # co-occurrences of (X at t, Y at t+1) for a candidate pair
    # candidates also need pmi above this (lift > 1.65): pairs near chance are dropped inside the pair
    # loop, so the candidate list stays small at large n and long token streams (at 16,384 x 1M
    # synthetic tokens a floor of 0 keeps 10.6M pairs); None keeps every pair with min_count
    candidate_pmi: float | None = 0.5
    min_pmi: float = 1.0  # ln lift: Y follows X at least e times more often than by chance
    min_mech: float = 2.0  # X raises Y's tokens by two standard deviations of its logit effects or more
    min_attribution: float = 0.0  # mean attribution per co-occurrence must be positive
    alpha: float = 0.01  # family-wise level of the co-occurrence test over the n^2 ordered pairs
    min_cond_prob: float = 0.0  # P(Y at t+1 | X at t) at least this
    max_out: int | None = None  # each source keeps only its max_out most likely successors (None: all)
    top_m: int = 8  # tokens in a unit's token class (mechanistic weight, transition inputs, labels)
    active_threshold: float = 0.0
    max_cycle_len: int = 8
    max_cycles: int = 200  # simple cycles enumerated at most (the count can grow exponentially)
    min_chain: int = 3  # states in a chain ("longer than two")
    weight: str = "pmi"  # edge attribute that ranks automata: pmi, mech or attribution_mean
    null_seed: int = 0
    work_per_chunk: int = 1 << 26  # multiply-adds per sparse product chunk (bounds its output too)
    engine: str = "auto"  # sparse inputs: numba (fused, one pass) or scipy (SpGEMM); auto: numba if present
    # --- the study (run_fsa) ---
    # a neuron is active above this: a third of the stdlib LMs' positive neuron activations lie below
    # 0.1, where a ReLU unit is barely on (features need no floor: the SAE's L1 already zeroes them)
    neuron_threshold: float = 0.1
    n_tokens: int | None = None  # analysis tokens used, the store's first (None: all of them)
    fit_frac: float = 0.8  # predictive check: graph fitted on this first share of the tokens, tested on the rest
    max_predict: int = 50  # automata given the predictive check (the top ones)
    n_top: int = 6  # automata drawn, exported one file each and given transition tables
    n_shuffles: int = 100  # shuffled matchings of the cross-seed baseline

    def __post_init__(self):
        if self.min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {self.min_count}")
        if not 0 < self.alpha <= 1:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.top_m < 1:
            raise ConfigError(f"top_m must be >= 1, got {self.top_m}")
        if self.weight not in ("pmi", "mech", "attribution_mean"):
            raise ConfigError(f"weight must be pmi, mech or attribution_mean, got {self.weight!r}")
        if self.engine not in ("auto", "numba", "scipy"):
            raise ConfigError(f"engine must be auto, numba or scipy, got {self.engine!r}")
        if self.engine == "numba" and not _have_numba():
            raise ConfigError("engine='numba' needs numba installed; use engine='scipy'")
        if self.max_cycle_len < 2 or self.min_chain < 3:
            raise ConfigError("max_cycle_len must be >= 2 and min_chain >= 3")
        if self.active_threshold < 0 or self.neuron_threshold < 0:
            raise ConfigError("active_threshold and neuron_threshold must be >= 0")
        if self.n_tokens is not None and self.n_tokens < 2:
            raise ConfigError(f"n_tokens must be empty (all) or >= 2, got {self.n_tokens}")
        if not 0 < self.fit_frac < 1:
            raise ConfigError(f"fit_frac must be in (0, 1), got {self.fit_frac}")
        if not 0 <= self.min_cond_prob <= 1:
            raise ConfigError(f"min_cond_prob must be in [0, 1], got {self.min_cond_prob}")
        if self.max_out is not None and self.max_out < 1:
            raise ConfigError(f"max_out must be empty (all) or >= 1, got {self.max_out}")
        if self.n_top < 1 or self.max_predict < 0 or self.n_shuffles < 0:
            raise ConfigError("n_top must be >= 1, max_predict and n_shuffles >= 0")


FSA_PRESETS = {
    # 30k tokens through a barely trained LM: few pairs and weak logit effects, so looser floors; the
    # shuffled null still keeps no edge of either basis at these (tests/test_fsa_study.py checks it)
    "smoke": FSAConfig(min_count=3, candidate_pmi=0.25, min_pmi=0.5, min_mech=1.0, n_top=3, n_shuffles=20,
                       max_predict=10),
    # On the stdlib LMs' 2,048 features (1M tokens) the significance floors alone keep 226k edges (a
    # third of the candidates; the shuffled null keeps none), one strongly connected component of
    # 1,863 features: real text is sequential everywhere. An automaton edge is a likely successor:
    # P(Y next | X) >= 0.2 and each feature's two most likely successors only leave 3.1k edges whose
    # SCCs have 11, 5, 4, 3, 3 and 3 features (README, "Automata").
    "default": FSAConfig(min_cond_prob=0.2, max_out=2),
    "paper": FSAConfig(min_count=10, min_cond_prob=0.2, max_out=2, n_top=10),
}


def get_fsa_preset(name: str) -> FSAConfig:
    if name not in FSA_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(FSA_PRESETS)}")
    return FSA_PRESETS[name]

# --- the feature-splitting study (its own section: not part of ``Config``) ------------------------

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


def parse_sizes(text: str) -> tuple[int, ...]:
    """Parse ``--sizes`` into a sorted tuple of dictionary sizes.

    Forms: one size ``4096``; a list ``512,2048,8192`` (any order, returned sorted); a doubling
    range ``512..131072`` (512, 1024, ..., 131072); a geometric range ``512..131072x4`` (512, 2048,
    ..., 131072). Each malformed spec raises a one-line :class:`ConfigError` saying what to change.
    """
    if not isinstance(text, str):
        raise ConfigError(f"--sizes: expected text such as '512..4096', got {type(text).__name__}")
    spec = text.strip()
    forms = "give '4096', a list '512,1024,4096', a doubling range '512..131072' or a step '512..131072x4'"
    if not spec:
        raise ConfigError(f"--sizes: empty; {forms}")

    def integer(part: str, what: str) -> int:
        p = part.strip()
        if not p:
            raise ConfigError(f"--sizes: {what} is missing in {text!r}; {forms}")
        try:
            v = int(p)
        except ValueError:
            raise ConfigError(f"--sizes: {what} {p!r} in {text!r} is not an integer; {forms}") from None
        if v <= 0:
            raise ConfigError(f"--sizes: {what} {v} in {text!r} must be a positive integer; {forms}")
        return v

    if ".." in spec:
        lo_s, _, rest = spec.partition("..")
        if ".." in rest:
            raise ConfigError(f"--sizes: one '..' per range, got {text!r}; {forms}")
        hi_s, x, step_s = rest.partition("x")
        lo, hi = integer(lo_s, "the start"), integer(hi_s, "the end")
        step = integer(step_s, "the step") if x else 2
        if step == 1:
            raise ConfigError(f"--sizes: a step of 1 never grows; use a step of 2 or more, e.g. {lo}..{hi}x2")
        if hi < lo:
            raise ConfigError(f"--sizes: the range {text!r} is reversed; put the smaller size first: {hi}..{lo}"
                              + (f"x{step}" if x else ""))
        out = [lo]
        while out[-1] < hi:
            out.append(out[-1] * step)
        if out[-1] != hi:  # the step overshot: name the nearest ends it does reach
            tail = f"x{step}" if x else ""
            ends = [e for e in (out[-2], out[-1]) if e > lo]
            raise ConfigError(f"--sizes: the step {step} from {lo} never lands on {hi}; end at "
                              + " or ".join(f"{e} ({lo}..{e}{tail})" for e in ends))
        return tuple(out)

    parts = spec.split(",")
    vals = [integer(p, f"item {i + 1}") for i, p in enumerate(parts)]
    dup = sorted({v for v in vals if vals.count(v) > 1})
    if dup:
        raise ConfigError(f"--sizes: {dup} repeated in {text!r}; give each size once")
    return tuple(sorted(vals))


def parse_counts(text: str, flag: str) -> tuple[int, ...]:
    """Parse token counts such as ``500k,1M,2M`` or ``500000,1000000`` (k = 1e3, M = 1e6) for ``flag``."""
    mult = {"k": 1_000, "m": 1_000_000}
    vals = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            v = float(part[:-1]) * mult[part[-1].lower()] if part[-1].lower() in mult else float(part)
        except ValueError:
            v = -1.0
        if v <= 0 or v != int(v):
            raise ConfigError(f"{flag}: cannot read {part!r} in {text!r}; give positive token counts such as "
                              "'500k,1M,2M' or '500000,1000000'")
        vals.append(int(v))
    if not vals:
        raise ConfigError(f"{flag}: no values in {text!r}; give e.g. '500k,1M,2M'")
    return tuple(sorted(set(vals)))


def parse_token_count(text: str, flag: str) -> int:
    """One token count such as ``2M`` or ``500k`` for ``flag``."""
    vals = parse_counts(text, flag)
    if len(vals) != 1:
        raise ConfigError(f"{flag}: give one token count such as '2M', got {text!r}")
    return vals[0]


def is_config(obj: Any) -> bool:
    return is_dataclass(obj)
