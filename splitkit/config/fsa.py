"""The automaton search's config (``studies.fsa``) and its presets."""

from __future__ import annotations

from dataclasses import dataclass

from .base import ConfigError, _Section


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
