"""The language-model stage: one cached transformer per seed, and the budget rule that trains both
again on more tokens while either is no better than its corpus's bigram model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..cache import atomic_write_json
from ..config import Config
from .core import VERSIONS, PipelineError, _cache, _claim, _say
from .tokens import get_tokens


@dataclass
class LMRun:
    folder: Path
    key: str
    seed: int

    def model(self, device: str = "cpu"):
        from ..lm import load_model

        return load_model(self.folder, device)

    @property
    def summary(self) -> dict:
        s = json.loads((self.folder / "summary.json").read_text())
        return {**s, **lm_verdict(s)}


# An LM that is not clearly better than a bigram model fitted on its own corpus has learned too
# little for the comparison of its neurons and features to mean much (on a prose corpus of 1.8M
# tokens the default LMs ended at 4.77 and 4.64 nats against bigrams' 4.72, and the finding was gone).
BIGRAM_MARGIN_NATS = 0.1


def lm_verdict(summary: dict) -> dict:
    """``beats_bigram``: validation loss at least ``BIGRAM_MARGIN_NATS`` below the bigram baseline."""
    gain = float(summary["bigram_loss"]) - float(summary["val_loss"])
    return {"gain_over_bigram": gain, "bigram_margin": BIGRAM_MARGIN_NATS, "beats_bigram": gain >= BIGRAM_MARGIN_NATS}


def _warn_if_undertrained(run: "LMRun") -> None:
    s = run.summary
    if not s["beats_bigram"]:
        _say(f"WARNING: LM seed {run.seed} is no better than bigrams: val loss {s['val_loss']:.3f} against the "
             f"bigram baseline {s['bigram_loss']:.3f} (needs {BIGRAM_MARGIN_NATS} nats below); its neurons and "
             "features mean little: train it longer (lm.n_tokens) or give more text")


def fit_lm_budget(cfg: Config, progress: bool = True) -> Config:
    """``cfg`` with ``lm.n_tokens`` the first of n, 2n, 4n, ... (at most ``cfg.lm_budget_doublings``
    doublings) at which the LMs of both runs (``seed_a``, ``seed_b``) are clearly better than a bigram
    model of their corpus (``lm_verdict``); the last budget tried when none is (its LMs keep their
    warning, which the reports repeat). Every budget's LMs are ordinary cached stages, so a rerun
    finds the answer without training, and an interrupted one resumes. On the stdlib corpus the
    default 3M tokens pass at once (val 3.8 against the bigram's 4.3 nats)."""
    cur = cfg
    for i in range(cfg.lm_budget_doublings + 1):
        weak = None
        for seed in (cur.seed_a, cur.seed_b):
            if not get_lm(cur, seed, progress).summary["beats_bigram"]:
                weak = seed
                break  # both go to the next budget: the other need not be trained at this one
        if weak is None or i == cfg.lm_budget_doublings:
            return cur
        nxt = cur.with_overrides(lm={"n_tokens": 2 * cur.lm.n_tokens})
        _say(f"the LM budget rule: LM seed {weak} is no better than bigrams at {cur.lm.n_tokens:,} tokens, so both "
             f"LMs train on {nxt.lm.n_tokens:,} (doubling {i + 1} of at most {cfg.lm_budget_doublings}; "
             "--lm-tokens sets a budget by hand)")
        cur = nxt
    return cur


def check_split_sizes(info: dict, cfg: Config) -> None:
    """Stop before any training when a split cannot hold one context window (else evaluation fails
    after a whole LM has trained, and again on every rerun)."""
    need = cfg.model.n_ctx + 1
    for split, meta in info["splits"].items():
        if meta["n_tokens"] < need:
            raise PipelineError(
                f"corpus too small: its {split} split holds {meta['n_tokens']:,} tokens ({meta['n_docs']} documents), "
                f"fewer than one context of {need}; give a larger --corpus (or change corpus.fractions)")


def get_lm(cfg: Config, seed: int, progress: bool = True) -> LMRun:
    from ..lm import evaluate_lm, save_model, train_lm

    data = get_tokens(cfg, progress)
    check_split_sizes(data.info, cfg)
    art = _cache(cfg).artifact("lm", {"model": cfg.model.to_dict(), "lm": cfg.lm.to_dict(), "seed": seed},
                               {"tokens": data.key}, VERSIONS["lm"])
    if not _claim(art):
        resumed = (art.partial_path / "checkpoint.json").exists()
        _say(f"training LM seed {seed}{' (resuming)' if resumed else ''} on {cfg.lm.n_tokens:,} tokens ...")
        work = art.begin(resume=True)
        info = data.info
        model, meta = train_lm(cfg.model, cfg.lm, info["vocab_size"], data.tokens("train"), seed, work,
                               device=cfg.device, progress=progress)
        val = evaluate_lm(model, data.tokens("val"), cfg.lm.eval_tokens)
        save_model(work, model, {"seed": seed})
        summary = {
            "seed": seed, "val_loss": val, **info["baselines"],
            "tokens_trained": meta["tokens_trained"], "wall_s": meta["elapsed_s"],
            "tokens_per_s": meta["tokens_trained"] / max(1e-9, meta["elapsed_s"]), "dtype": meta["dtype"],
            "final_train_loss": meta["log"][-1]["loss"] if meta["log"] else None, "eval_tokens": cfg.lm.eval_tokens,
        }
        atomic_write_json(work / "summary.json", summary)
        atomic_write_json(work / "train_log.json", meta["log"])
        for f in ("checkpoint.safetensors", "checkpoint.json"):
            (work / f).unlink(missing_ok=True)  # the finished model replaces the resume checkpoint
        art.seal()
        _say(f"LM seed {seed}: val loss {val:.3f} nats/token (unigram {info['baselines']['unigram_entropy']:.2f}, "
             f"bigram {info['baselines']['bigram_loss']:.2f}); {summary['tokens_per_s']:,.0f} tok/s")
    run = LMRun(art.path, art.key, seed)
    if art.key not in _WARNED:  # once per LM and process, before any dictionary is trained on it
        _WARNED.add(art.key)
        _warn_if_undertrained(run)
    return run


_WARNED: set[str] = set()
