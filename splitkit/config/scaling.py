"""The universality-scaling grid's config (``studies.universality_scaling``) and its presets."""

from __future__ import annotations

from dataclasses import dataclass

from .base import ConfigError, _recipe_names, _Section


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
    # k 32: at 4,096 latents the topk recipe leaves 3.0% dead at k 32, 11.5% at k 16 (docs/recipes.md)
    topk_k: int = 32
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
    # False: train only the fixed-L0 arms (their fixed-lambda lines can come from an earlier table's
    # rows, ``report.scaling.write_scaling``); needs ``target_l0s``
    fixed_lambda: bool = True

    def __post_init__(self):
        if isinstance(self.target_l0s, list):
            object.__setattr__(self, "target_l0s", tuple(self.target_l0s))
        if any(isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 for t in self.target_l0s) \
                or list(self.target_l0s) != sorted(set(self.target_l0s)):
            raise ConfigError(f"scaling.target_l0s must be increasing positive mean L0s, got {list(self.target_l0s)}")
        if not isinstance(self.fixed_lambda, bool):
            raise ConfigError(f"scaling.fixed_lambda must be true or false, got {self.fixed_lambda!r}")
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
        if not self.fixed_lambda and not self.arms():  # no target_l0s, or only topk (whose L0 is its k)
            raise ConfigError(f"scaling.fixed_lambda false leaves no arm: recipes {list(self.recipes)} with "
                              f"target_l0s {list(self.target_l0s)} give no L0 target (name a penalised recipe "
                              f"and --target-l0s, e.g. 8,16,32)")

    def arms(self) -> list[tuple[str, str, float | None]]:
        """``(label, recipe, target_l0)`` per grid arm: each recipe at its fixed lambda (label: the
        recipe; left out when ``fixed_lambda`` is false), then each penalised recipe once per
        ``target_l0s`` (label ``recipe@L0=16``)."""
        from ..train.recipes import get_recipe  # lazily, as _recipe_names does

        out = [(r, r, None) for r in self.recipes] if self.fixed_lambda else []
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
        from ..train.recipes import get_recipe  # lazily, as _recipe_names does (recipes fills the registry)

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
