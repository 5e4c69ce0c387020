"""The named presets of :class:`Config`: ``smoke`` (the same code path in seconds, for tests),
``default`` (a first run on a 2-core CPU: stdlib corpus, two LMs, 2048-feature dictionaries) and
``paper`` (the paper's sizes, 512 .. 131072 features; needs a GPU and a larger corpus)."""

from __future__ import annotations

from .base import ConfigError
from .sections import (ActivationsConfig, AnalysisConfig, Config, CorpusConfig, DictConfig, LMTrainConfig,
                       ModelConfig, TokenizerConfig)


def _smoke() -> Config:
    return Config(
        preset="smoke",
        corpus=CorpusConfig(max_docs=120, fractions=(0.7, 0.1, 0.2)),
        tokenizer=TokenizerConfig(vocab_size=512),
        model=ModelConfig(d_model=32, n_heads=2, d_mlp=64, n_ctx=32),
        # 200k tokens (~3 s an LM): at 40k the direct path of an LM is still one +-frequency direction, so
        # every logit-effect correlation is about +-1 and their medians flip with the CPU's arithmetic
        lm=LMTrainConfig(n_tokens=200_000, batch_size=16, lr=3e-3, checkpoint_every=50, eval_tokens=8192),
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
