"""The corpus stage: documents, the tokenizer and the token splits (train, val, analysis), the extra
analysis text of installed packages, and the n-gram baselines an LM must beat."""

from __future__ import annotations

import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import atomic_write_json
from ..config import Config
from .core import VERSIONS, PipelineError, _cache, _claim, _say


def _corpus_fingerprint(cfg: Config) -> dict:
    """Cheap identity of the corpus; the corpus manifest inside the artifact keeps the content hash.

    The standard library is identified by interpreter version and path (it does not change under a
    given interpreter); a user's file by size and mtime; a user's folder by its listing.
    """
    return _fingerprint(cfg.corpus.path, cfg.corpus.glob)


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str | None, pattern: str) -> dict:
    from ..corpus import CorpusError, stdlib_root

    if path is None:
        return {"stdlib": str(stdlib_root()), "python": sys.version.split()[0], "glob": pattern}
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(f"--corpus {root}: no such file or folder")
    if root.is_file():
        st = root.stat()
        return {"path": str(root.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}
    import hashlib

    h = hashlib.sha256()
    n = 0
    for p in sorted(root.glob(pattern)):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
            n += 1
    return {"path": str(root.resolve()), "files": n, "listing": h.hexdigest()[:16]}


@dataclass
class TokenData:
    """Token arrays per split, the tokenizer and the corpus manifest."""

    folder: Path
    key: str

    def tokens(self, split: str) -> np.ndarray:
        return np.load(self.folder / f"{split}.npy", mmap_mode="r")

    @property
    def tokenizer(self):
        from ..tokenizer import load_tokenizer

        return load_tokenizer(self.folder / "tokenizer.json")

    @property
    def info(self) -> dict:
        return json.loads((self.folder / "info.json").read_text())


def get_tokens(cfg: Config, progress: bool = True) -> TokenData:
    from ..corpus import corpus_manifest, load_documents, split_documents
    from ..tokenizer import encode_documents, train_tokenizer

    art = _cache(cfg).artifact(
        "tokens", {"corpus": cfg.corpus.to_dict(), "tokenizer": cfg.tokenizer.to_dict()},
        {"corpus": json.dumps(_corpus_fingerprint(cfg), sort_keys=True)}, VERSIONS["tokens"])
    if not _claim(art):
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
        info["baselines"] = ngram_baselines(np.load(work / "train.npy"), np.load(work / "val.npy"), info["vocab_size"])
        info["build_s"] = time.perf_counter() - t0
        atomic_write_json(work / "corpus_manifest.json", corpus_manifest(splits, cfg.corpus))
        atomic_write_json(work / "info.json", info)
        art.seal()
        _say(f"tokens: {info['splits']['train']['n_tokens']:,} train / {info['splits']['val']['n_tokens']:,} val / "
             f"{info['splits']['analysis']['n_tokens']:,} analysis ({time.perf_counter() - t0:.0f} s)")
    return TokenData(art.path, art.key)


@functools.lru_cache(maxsize=4)
def _packages_fingerprint(packages: tuple[str, ...]) -> str:
    """Versions and file listings of the extra packages: an upgrade rebuilds their tokens."""
    from ..corpus import package_root, package_version

    out = {}
    for name in packages:
        root = package_root(name)
        out[name] = {"version": package_version(name),
                     "listing": None if root is None else _fingerprint(str(root), "**/*.py")["listing"]}
    return json.dumps(out, sort_keys=True)


def get_extra_tokens(cfg: Config, progress: bool = True) -> np.ndarray:
    """Tokens ``[n]`` of the held-out package sources that extend the analysis split (``analysis.extra_packages``).

    Encoded with the corpus's tokenizer, documents EOT-separated, in the seeded mixed order of
    :func:`corpus.load_package_documents`; files identical to a corpus document are left out.
    """
    from ..corpus import (
        corpus_manifest,
        load_documents,
        load_package_documents,
        text_digest,
    )
    from ..tokenizer import encode_documents

    pkgs = tuple(cfg.analysis.extra_packages)
    if not pkgs:
        raise PipelineError("analysis.extra_packages is empty: analysis sets cannot go past the corpus's analysis split")
    data = get_tokens(cfg, progress)
    art = _cache(cfg).artifact("tokens_extra", {"packages": list(pkgs), "order_seed": cfg.corpus.split_seed},
                               {"tokens": data.key, "packages": _packages_fingerprint(pkgs)}, VERSIONS["tokens_extra"])
    if not _claim(art):
        t0 = time.perf_counter()
        _say(f"reading the Python sources of {', '.join(pkgs)} (held-out analysis text) ...")
        exclude = {text_digest(d.text) for d in load_documents(cfg.corpus)}
        docs, info = load_package_documents(pkgs, exclude, order_seed=cfg.corpus.split_seed)
        if not docs:
            raise PipelineError(f"none of the packages {list(pkgs)} is installed with Python sources; "
                                "set analysis.extra_packages or use a larger --corpus")
        work = art.begin(resume=False)
        arr, starts = encode_documents(data.tokenizer, [d.text for d in docs])
        np.save(work / "tokens.npy", arr)
        np.save(work / "doc_starts.npy", starts)
        n_chars = sum(len(d.text) for d in docs)
        atomic_write_json(work / "info.json", {"packages": info, "n_docs": len(docs), "n_tokens": int(len(arr)),
                                               "n_chars": n_chars, "chars_per_token": n_chars / max(1, len(arr)),
                                               "build_s": time.perf_counter() - t0})
        atomic_write_json(work / "corpus_manifest.json", corpus_manifest({"extra": docs}, cfg.corpus))
        art.seal()
        _say(f"extra analysis text: {len(arr):,} tokens from {len(docs):,} files ({time.perf_counter() - t0:.0f} s)")
    return np.load(art.path / "tokens.npy", mmap_mode="r")


def analysis_tokens(cfg: Config, n_tokens: int, progress: bool = True) -> np.ndarray:
    """The first ``n_tokens`` of the analysis stream, rounded up to whole ``n_ctx`` windows: ``[n_win * n_ctx]``.

    The stream is the corpus's analysis split (whole windows, in order, the same tokens as the
    analysis activation store) followed, when more is asked for, by :func:`get_extra_tokens`.
    """
    from ..config import ConfigError

    T = cfg.model.n_ctx
    data = get_tokens(cfg, progress)
    split = data.tokens("analysis")
    n_split = (len(split) // T) * T
    need = -(-n_tokens // T) * T
    if need <= n_split:
        return np.asarray(split[:need])
    if not cfg.analysis.extra_packages:
        raise ConfigError(f"an analysis set of {n_tokens:,} tokens is larger than the corpus's analysis split "
                          f"({n_split:,}); use a larger --corpus or set analysis.extra_packages")
    extra = get_extra_tokens(cfg, progress)
    n_extra = (len(extra) // T) * T
    if need > n_split + n_extra:
        raise ConfigError(f"an analysis set of {n_tokens:,} tokens is larger than the analysis split ({n_split:,}) "
                          f"plus the extra package sources ({n_extra:,}); ask for at most {n_split + n_extra:,}")
    return np.concatenate([np.asarray(split[:n_split]), np.asarray(extra[: need - n_split]).astype(split.dtype)])


def ngram_baselines(train: np.ndarray, val: np.ndarray, vocab_size: int) -> dict:
    """Baselines for the LM's validation loss, in nats/token.

    - ``unigram_entropy``: entropy of the validation split's own token distribution (the best any
      context-free model could do there).
    - ``bigram_loss``: cross-entropy on the validation split of a bigram model counted on the training
      split, smoothed towards the unigram by ``alpha`` pseudo-counts; the best of a few ``alpha`` is
      kept, which flatters the baseline slightly.
    """
    v = np.asarray(val, dtype=np.int64)
    t = np.asarray(train, dtype=np.int64)
    p = np.bincount(v, minlength=vocab_size).astype(np.float64)
    p = p[p > 0] / p.sum()
    unigram = float(-(p * np.log(p)).sum())
    uni = (np.bincount(t, minlength=vocab_size) + 1.0) / (len(t) + vocab_size)
    pair = t[:-1] * vocab_size + t[1:]
    keys, counts = np.unique(pair, return_counts=True)
    prev = np.bincount(t[:-1], minlength=vocab_size).astype(np.float64)
    vp = v[:-1] * vocab_size + v[1:]
    pos = np.searchsorted(keys, vp)
    pos[pos == len(keys)] = 0
    c_ab = np.where(keys[pos] == vp, counts[pos], 0).astype(np.float64)
    best = None
    for alpha in (0.1, 1.0, 10.0, 100.0):
        prob = (c_ab + alpha * uni[v[1:]]) / (prev[v[:-1]] + alpha)
        loss = float(-np.log(prob).mean())
        best = loss if best is None else min(best, loss)
    return {"unigram_entropy": unigram, "bigram_loss": best}
