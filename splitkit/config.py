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
    # (loss recovered >= 85% on both runs at L0 <= 20) with features 0.2 above neurons; bigger or
    # longer-trained dictionaries reconstruct better but match across seeds less (docs/results.md).
    sizes: tuple[int, ...] = (2048,)
    # l1_decnorm (Anthropic, April 2024) by default: on this CPU's budget the paper's recipe leaves most
    # of a 4096 dictionary as rare resampled features that match nothing, while l1_decnorm keeps every
    # feature alive and the finding shows (docs/results.md has the curves that decided this).
    recipe: str = "l1_decnorm"
    n_tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    # The loss averages the squared error over the 512 inputs, so lambda is on that scale. Measured on
    # the stdlib LMs at 2048 features, 2M tokens (this schedule): l1_decnorm 1.6e-3 -> L0 18, loss
    # recovered 87.7%, features vs neurons +0.19; 1.8e-3 -> L0 16, 85.7%, +0.20; 2.0e-3 -> L0 15,
    # 83.8%. The paper recipe needs ~1.2e-3 for L0 ~14 at 4096 features.
    l1_coeff: float = 1.8e-3
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

    def key_dict(self) -> dict:
        """``to_dict`` for cache keys: unset schedule fields are left out, so caches keyed before
        these fields existed stay valid."""
        d = self.to_dict()
        for name in ("l1_warmup_tokens", "lr_decay_frac"):
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
        bad = [r for r in self.recipes if r not in _recipe_names()]
        if bad:
            raise ConfigError(f"scaling.recipes: unknown recipe(s) {bad}; choose from {', '.join(_recipe_names())}")
        if isinstance(self.paper_budgets, list):
            object.__setattr__(self, "paper_budgets", tuple(self.paper_budgets))
        for name in ("sizes", "budgets", "analysis_tokens") + (("paper_budgets",) if self.paper_budgets else ()):
            v = getattr(self, name)
            if any((not isinstance(x, int)) or x <= 0 for x in v) or list(v) != sorted(set(v)):
                raise ConfigError(f"scaling.{name} must be increasing positive integers, got {list(v)}")

    def budgets_for(self, recipe: str) -> tuple[int, ...]:
        """The SAE budgets of ``recipe``'s families (the largest ends the run)."""
        return self.paper_budgets if recipe == "paper" and self.paper_budgets else self.budgets

    def l1_coeff_for(self, recipe: str) -> float:
        """lambda of ``recipe``'s families (the L1 recipes; ``paper_l1_coeff`` unless it is l1_decnorm)."""
        return self.l1_decnorm_coeff if recipe == "l1_decnorm" else self.paper_l1_coeff

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
