"""The cached pipeline every study stands on: one ``get_*`` function per stage.

    corpus -> tokens (+ tokenizer) -> LM (seed) -> activation store -> dictionaries -> feature acts

Each ``get_X(cfg, ...)`` returns the cached artifact when its key exists and its manifest checks
out, and builds it otherwise (resuming from the stage's last checkpoint if a build was interrupted).
Studies call these and never train or harvest on their own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import Artifact, Cache, CacheError, atomic_write_json, check_manifest
from .config import Config

log = logging.getLogger("splitkit")

# Code versions of each stage: bump when the stage's output for the same config would change.
VERSIONS = {"tokens": 1, "lm": 1, "acts": 1, "dicts": 1, "sae_eval": 1, "features": 1}


class PipelineError(RuntimeError):
    """A stage cannot run; the message says what to fix."""


def _cache(cfg: Config) -> Cache:
    return Cache(cfg.cache_dir)


def _say(msg: str) -> None:
    print(f"[splitkit] {msg}", file=sys.stderr, flush=True)


def _ready(art: Artifact) -> bool:
    if not art.path.exists():
        return False
    try:
        art.check(verify=True)
        return True
    except CacheError as e:
        _say(f"rebuilding {art.stage}/{art.key}: {e}")
        return False


# --- corpus and tokens ---------------------------------------------------------------------------

def _corpus_fingerprint(cfg: Config) -> dict:
    """Cheap identity of the corpus (names, sizes, mtimes); the manifest keeps the content hash."""
    from .corpus import stdlib_root

    root = Path(cfg.corpus.path).expanduser() if cfg.corpus.path else stdlib_root()
    if not root.exists():
        from .corpus import CorpusError

        raise CorpusError(f"--corpus {root}: no such file or folder")
    if root.is_file():
        st = root.stat()
        return {"path": str(root.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}
    import hashlib

    h = hashlib.sha256()
    n = 0
    for p in sorted(root.glob(cfg.corpus.glob)):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
            n += 1
    return {"path": str(root.resolve()), "files": n, "listing": h.hexdigest()[:16],
            "python": sys.version.split()[0] if cfg.corpus.path is None else None}


@dataclass
class TokenData:
    """Token arrays per split, the tokenizer and the corpus manifest."""

    folder: Path
    key: str

    def tokens(self, split: str) -> np.ndarray:
        return np.load(self.folder / f"{split}.npy", mmap_mode="r")

    @property
    def tokenizer(self):
        from .tokenizer import load_tokenizer

        return load_tokenizer(self.folder / "tokenizer.json")

    @property
    def info(self) -> dict:
        return json.loads((self.folder / "info.json").read_text())


def get_tokens(cfg: Config, progress: bool = True) -> TokenData:
    from .corpus import corpus_manifest, load_documents, split_documents
    from .tokenizer import encode_documents, train_tokenizer

    art = _cache(cfg).artifact(
        "tokens", {"corpus": cfg.corpus.to_dict(), "tokenizer": cfg.tokenizer.to_dict()},
        {"corpus": json.dumps(_corpus_fingerprint(cfg), sort_keys=True)}, VERSIONS["tokens"])
    if not _ready(art):
        t0 = time.perf_counter()
        _say("reading corpus and training the tokenizer ...")
        docs = load_documents(cfg.corpus)
        splits = split_documents(docs, cfg.corpus)
        work = art.begin(resume=False)
        tok = train_tokenizer((d.text for d in splits["train"]), cfg.tokenizer)
        tok.save(str(work / "tokenizer.json"))
        info = {"vocab_size": tok.get_vocab_size(), "splits": {}}
        for s, ds in splits.items():
            arr, starts = encode_documents(tok, [d.text for d in ds])
            np.save(work / f"{s}.npy", arr)
            np.save(work / f"{s}_doc_starts.npy", starts)
            n_chars = sum(len(d.text) for d in ds)
            info["splits"][s] = {"n_docs": len(ds), "n_tokens": int(len(arr)), "n_chars": n_chars,
                                 "chars_per_token": n_chars / max(1, len(arr))}
        info["baselines"] = ngram_baselines(np.load(work / "val.npy"), info["vocab_size"])
        info["build_s"] = time.perf_counter() - t0
        atomic_write_json(work / "corpus_manifest.json", corpus_manifest(splits, cfg.corpus))
        atomic_write_json(work / "info.json", info)
        art.seal()
        _say(f"tokens: {info['splits']['train']['n_tokens']:,} train / {info['splits']['val']['n_tokens']:,} val / "
             f"{info['splits']['analysis']['n_tokens']:,} analysis ({time.perf_counter() - t0:.0f} s)")
    return TokenData(art.path, art.key)


def ngram_baselines(tokens: np.ndarray, vocab_size: int) -> dict:
    """Empirical unigram entropy and bigram conditional entropy of a split (nats/token).

    Both are fitted on the split they are measured on, so they are the best any unigram or bigram
    model could score there: a strict bar for the language model's validation loss.
    """
    t = np.asarray(tokens, dtype=np.int64)
    p = np.bincount(t, minlength=vocab_size).astype(np.float64)
    p = p[p > 0] / p.sum()
    unigram = float(-(p * np.log(p)).sum())
    pair = t[:-1] * vocab_size + t[1:]
    prev = np.bincount(t[:-1], minlength=vocab_size).astype(np.float64)
    uniq, counts = np.unique(pair, return_counts=True)
    n = counts.sum()
    cond = counts / prev[uniq // vocab_size]
    bigram = float(-(counts / n * np.log(cond)).sum())
    return {"unigram_entropy": unigram, "bigram_entropy": bigram}


# --- language models -----------------------------------------------------------------------------

@dataclass
class LMRun:
    folder: Path
    key: str
    seed: int

    def model(self, device: str = "cpu"):
        from .lm import load_model

        return load_model(self.folder, device)

    @property
    def summary(self) -> dict:
        return json.loads((self.folder / "summary.json").read_text())


def get_lm(cfg: Config, seed: int, progress: bool = True) -> LMRun:
    from .lm import evaluate_lm, save_model, train_lm

    data = get_tokens(cfg, progress)
    art = _cache(cfg).artifact("lm", {"model": cfg.model.to_dict(), "lm": cfg.lm.to_dict(), "seed": seed},
                               {"tokens": data.key}, VERSIONS["lm"])
    if not _ready(art):
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
             f"bigram {info['baselines']['bigram_entropy']:.2f}); {summary['tokens_per_s']:,.0f} tok/s")
    return LMRun(art.path, art.key, seed)


# --- activation stores ---------------------------------------------------------------------------

def get_acts(cfg: Config, seed: int, split: str | None = None, progress: bool = True):
    """The activation store of LM ``seed`` over ``split`` (default: the dictionaries' training split).

    The analysis split is taken in order (first ``analysis.n_tokens`` tokens) so both runs see the
    same tokens; training stores are a seeded random subset of windows, the same for A and B.
    """
    from .activations import ActivationStore, harvest, window_starts

    split = split or cfg.acts.split
    lm = get_lm(cfg, seed, progress)
    data = get_tokens(cfg, progress)
    n_tokens = cfg.analysis.n_tokens if split == "analysis" else cfg.acts.n_tokens
    sub = {**cfg.acts.to_dict(), "split": split, "n_tokens": n_tokens}
    art = _cache(cfg).artifact("acts", sub, {"lm": lm.key}, VERSIONS["acts"])
    if not _ready(art):
        toks = data.tokens(split)
        starts = window_starts(len(toks), cfg.model.n_ctx, n_tokens, seed=None if split == "analysis" else 1234)
        _say(f"harvesting MLP activations of LM seed {seed} on {len(starts) * cfg.model.n_ctx:,} {split} tokens ...")
        work = art.begin(resume=False)
        harvest(lm.model(cfg.device), toks, starts, work, cfg.acts.shard_tokens, cfg.acts.dtype,
                device=cfg.device, progress=progress)
        art.seal()
    return ActivationStore(art.path)
