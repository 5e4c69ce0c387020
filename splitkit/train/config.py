"""The trainer's config: one frozen dataclass, with the recipe's own defaults resolved through it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..precision import MATMUL_DTYPES
from ..sae import strict_from_dict
from .registry import get_recipe, recipe_names

# ``Recipe`` in annotations is :class:`.recipes.Recipe`, left unimported: the recipes refer to this module


@dataclass(frozen=True)
class TrainerConfig:
    """How to train a family. Defaults run a 4,096-feature dictionary on this CPU in minutes.

    recipe: a registered recipe's name ("paper", "l1_decnorm", "topk": :mod:`.recipes`). lr: Adam step size (the paper
    does not state it). l1_coeff: lambda (0.004 is the paper's value for A/5; unused by topk).
    k: topk's k (None: each dictionary's own ``cfg.k``). aux_k / aux_coeff: AuxK's k_aux (None:
    the recipe's, 32 for topk; Gao et al.'s d_in // 2 when a recipe has none) and weight. n_steps: steps of ``batch_size`` tokens (the source's batch size is what
    is used). resample_steps: paper recipe; None means ``resample_fracs`` of n_steps. dead_window:
    steps without firing after which a feature counts as dead (None: 2.5% of n_steps, half the
    default resample spacing, like the paper's 12.5k of 25k); firing counts are also accumulated
    over windows of this length for density statistics. resample_n_inputs: inputs scored when
    resampling (paper: 819,200). l1_warmup_frac / lr_decay_frac: None means the recipe's default
    (``Recipe.l1_warmup_frac`` / ``lr_decay_frac``; l1_decnorm: 0.05 / 0.2; others 0 / 0).
    matmul_dtype: "auto" | "bfloat16" | "float32" (:mod:`splitkit.precision`).
    sparse_density_max: use the sparse backward when at most this share of (token, feature) pairs
    is active (the measured break-even on 2 CPU cores was 12-15%). chunk_elems: largest [rows, n]
    block held at once (bounds memory for large n).
    prefixes: the prefix sizes a nested recipe trains every dictionary as (``Recipe.family_layout``;
    the prefixes below a dictionary's size are also saved beside it); () for the other recipes.
    snapshot_steps: after these many steps, save a copy of every dictionary. checkpoint_every:
    steps between checkpoints (0: only at the end). log_every: steps between logged metrics.
    target_l0: None (lambda follows its schedule) or the mean L0 each dictionary's lambda is steered
    to (:mod:`.l0control`; the L1 recipes): l0_gain (log lambda per unit of log L0 error per step),
    l0_ema_decay (the L0 average's memory), active from the warm-up's end and at least
    l0_start_frac of the run, frozen over the last l0_freeze_frac.
    """

    recipe: str = "paper"
    lr: float = 1e-3
    l1_coeff: float = 4e-3
    k: int | None = None
    aux_k: int | None = None
    aux_coeff: float = 1.0 / 32.0
    n_steps: int = 2000
    batch_size: int = 4096
    resample_steps: tuple[int, ...] | None = None
    resample_fracs: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20)
    dead_window: int | None = None
    resample_n_inputs: int = 65536
    l1_warmup_frac: float | None = None
    lr_decay_frac: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    matmul_dtype: str = "auto"
    sparse_density_max: float = 0.1
    chunk_elems: int = 1 << 26
    seed: int = 0
    prefixes: tuple[int, ...] = ()
    snapshot_steps: tuple[int, ...] = ()
    checkpoint_every: int = 0
    log_every: int = 10
    target_l0: float | None = None
    l0_gain: float = 0.02
    l0_ema_decay: float = 0.8
    l0_start_frac: float = 0.05
    l0_freeze_frac: float = 0.05

    def __post_init__(self) -> None:
        # Tuples may arrive as lists (from JSON): store tuples so the config stays hashable.
        for name in ("resample_steps", "resample_fracs", "snapshot_steps", "prefixes"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.recipe not in recipe_names():
            raise ValueError(f"TrainerConfig.recipe must be one of {recipe_names()}, got {self.recipe!r}")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"TrainerConfig.matmul_dtype must be one of {MATMUL_DTYPES}, got {self.matmul_dtype!r}")
        for name in ("n_steps", "batch_size", "resample_n_inputs", "chunk_elems", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainerConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "l1_coeff", "aux_coeff", "adam_eps"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"TrainerConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("adam_beta1", "adam_beta2", "sparse_density_max"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise ValueError(f"TrainerConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("l1_warmup_frac", "lr_decay_frac"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"TrainerConfig.{name} must be None or in [0, 1], got {value!r}")
        if self.target_l0 is not None and not (float(self.target_l0) > 0 and not self.recipe_object.uses_k):
            raise ValueError(f"TrainerConfig.target_l0 must be None or > 0 for an L1 recipe (k sets topk's L0), "
                             f"got {self.target_l0!r} for {self.recipe!r}")
        for name in ("l0_ema_decay", "l0_start_frac", "l0_freeze_frac"):
            if not 0 <= float(getattr(self, name)) < 1:
                raise ValueError(f"TrainerConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not float(self.l0_gain) >= 0:
            raise ValueError(f"TrainerConfig.l0_gain must be >= 0, got {self.l0_gain!r}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"TrainerConfig.k must be None or >= 1, got {self.k!r}")
        if self.aux_k is not None and self.aux_k < 1:
            raise ValueError(f"TrainerConfig.aux_k must be None or >= 1, got {self.aux_k!r}")
        if self.dead_window is not None and self.dead_window < 1:
            raise ValueError(f"TrainerConfig.dead_window must be None or >= 1, got {self.dead_window!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"TrainerConfig.checkpoint_every must be >= 0, got {self.checkpoint_every!r}")
        if self.resample_steps is not None and any(not 0 < s < self.n_steps for s in self.resample_steps):
            raise ValueError(f"TrainerConfig.resample_steps must lie in (0, n_steps={self.n_steps}), "
                             f"got {self.resample_steps}")
        if any(not 0 < f < 1 for f in self.resample_fracs):
            raise ValueError(f"TrainerConfig.resample_fracs must lie in (0, 1), got {self.resample_fracs}")
        p = self.prefixes
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in p) or list(p) != sorted(set(p)):
            raise ValueError(f"TrainerConfig.prefixes must be ascending distinct positive ints, got {p}")
        if any(not 0 < s <= self.n_steps for s in self.snapshot_steps):
            raise ValueError(f"TrainerConfig.snapshot_steps must lie in (0, n_steps={self.n_steps}], "
                             f"got {self.snapshot_steps}")

    # -- resolved defaults
    @property
    def recipe_object(self) -> Recipe:
        """The registered :class:`~.recipes.Recipe` named by ``recipe``."""
        return get_recipe(self.recipe)

    @property
    def resolved_resample_steps(self) -> tuple[int, ...]:
        if not self.recipe_object.resamples:
            return ()
        if self.resample_steps is not None:
            return tuple(sorted(set(int(s) for s in self.resample_steps)))
        steps = {int(round(f * self.n_steps)) for f in self.resample_fracs}
        return tuple(sorted(s for s in steps if 0 < s < self.n_steps))

    @property
    def resolved_dead_window(self) -> int:
        if self.dead_window is not None:
            return int(self.dead_window)
        return max(1, int(round(0.025 * self.n_steps)))

    @property
    def resolved_l1_warmup_frac(self) -> float:
        if self.l1_warmup_frac is not None:
            return float(self.l1_warmup_frac)
        return float(self.recipe_object.l1_warmup_frac)

    @property
    def resolved_lr_decay_frac(self) -> float:
        if self.lr_decay_frac is not None:
            return float(self.lr_decay_frac)
        return float(self.recipe_object.lr_decay_frac)

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step``: constant, then linear decay to 0 over the last lr_decay_frac."""
        decay = self.resolved_lr_decay_frac * self.n_steps
        if decay <= 0:
            return self.lr
        return self.lr * min(1.0, (self.n_steps - step) / decay)

    def l1_at(self, step: int) -> float:
        """lambda at ``step``: linear warm-up from 0 over the first l1_warmup_frac, then constant."""
        warm = self.resolved_l1_warmup_frac * self.n_steps
        if warm <= 0:
            return self.l1_coeff
        return self.l1_coeff * min(1.0, (step + 1) / warm)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("resample_steps", "resample_fracs", "snapshot_steps", "prefixes"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerConfig":
        return strict_from_dict(cls, data)

