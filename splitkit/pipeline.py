"""The cached pipeline every study stands on: one ``get_*`` function per stage.

    corpus -> tokens (+ tokenizer) -> LM (seed) -> activation store -> dictionaries -> feature acts

Each ``get_X(cfg, ...)`` returns the cached artifact when its key exists and its manifest checks
out, and builds it otherwise (resuming from the stage's last checkpoint if a build was interrupted).
Studies call these and never train or harvest on their own.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import Artifact, Cache, CacheError, atomic_write_json
from .config import Config

log = logging.getLogger("splitkit")

# Code versions of each stage: bump when the stage's output for the same config would change.
# acts 3: shards stored as CSR (the same values bit for bit, other files), see activations.py.
VERSIONS = {"tokens": 2, "tokens_extra": 1, "lm": 1, "acts": 3, "dicts": 1, "sae_eval": 1, "features": 1,
            "effects": 1, "maps": 1}


class PipelineError(RuntimeError):
    """A stage cannot run; the message says what to fix."""


def _cache(cfg: Config) -> Cache:
    return Cache(cfg.cache_dir)


def _say(msg: str) -> None:
    print(f"[splitkit] {msg}", file=sys.stderr, flush=True)


def read_artifact_file(path: Path, loader):
    """``loader(path)``, or a one-line PipelineError naming the folder to delete when the file cannot be read
    (a file damaged under a manifest rebuilt by hand, say: its checksums then vouch for the damage)."""
    try:
        return loader(path)
    except Exception as e:  # numpy, scipy and zipfile raise many types for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(f"{path} is unreadable ({type(e).__name__}: {reason[:120]}); delete {path.parent} "
                            "and the stage is rebuilt") from None


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
    """Cheap identity of the corpus; the corpus manifest inside the artifact keeps the content hash.

    The standard library is identified by interpreter version and path (it does not change under a
    given interpreter); a user's file by size and mtime; a user's folder by its listing.
    """
    return _fingerprint(cfg.corpus.path, cfg.corpus.glob)


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str | None, pattern: str) -> dict:
    from .corpus import CorpusError, stdlib_root

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
    from .corpus import package_root, package_version

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
    from .corpus import corpus_manifest, load_documents, load_package_documents, text_digest
    from .tokenizer import encode_documents

    pkgs = tuple(cfg.analysis.extra_packages)
    if not pkgs:
        raise PipelineError("analysis.extra_packages is empty: analysis sets cannot go past the corpus's analysis split")
    data = get_tokens(cfg, progress)
    art = _cache(cfg).artifact("tokens_extra", {"packages": list(pkgs), "order_seed": cfg.corpus.split_seed},
                               {"tokens": data.key, "packages": _packages_fingerprint(pkgs)}, VERSIONS["tokens_extra"])
    if not _ready(art):
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
    from .config import ConfigError

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
    from .lm import evaluate_lm, save_model, train_lm

    data = get_tokens(cfg, progress)
    check_split_sizes(data.info, cfg)
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
             f"bigram {info['baselines']['bigram_loss']:.2f}); {summary['tokens_per_s']:,.0f} tok/s")
    run = LMRun(art.path, art.key, seed)
    if art.key not in _WARNED:  # once per LM and process, before any dictionary is trained on it
        _WARNED.add(art.key)
        _warn_if_undertrained(run)
    return run


_WARNED: set[str] = set()


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


# --- dictionaries ----------------------------------------------------------------------------------

@dataclass
class Family:
    """A trained family of dictionaries (one per size) on the activations of LM ``seed``."""

    folder: Path
    key: str
    seed: int
    sizes: tuple[int, ...]

    def sae_dir(self, n: int, snapshot_step: int | None = None) -> Path:
        if n not in self.sizes:
            raise PipelineError(f"no dictionary of size {n} in this family (sizes {list(self.sizes)})")
        if snapshot_step is None:
            return self.folder / "final" / f"sae_{n}"
        return self.folder / "snapshots" / f"step_{snapshot_step}" / f"sae_{n}"

    def sae(self, n: int, snapshot_step: int | None = None, device: str = "cpu"):
        from .sae import SparseAutoencoder

        return SparseAutoencoder.load(self.sae_dir(n, snapshot_step), device=device)

    def sae_id(self, n: int) -> str:
        return f"lm{self.seed}-n{n}-{self.key[:6]}"

    @property
    def train_summary(self) -> dict:
        return json.loads((self.folder / "train_summary.json").read_text())


def trainer_config(cfg: Config):
    """The one conversion from the study's ``DictConfig`` (tokens) to the trainer's ``TrainerConfig`` (steps)."""
    from .train import TrainerConfig, get_recipe

    dc = cfg.dict
    n_steps = max(1, dc.n_tokens // dc.batch_size)
    snaps = tuple(sorted({max(1, t // dc.batch_size) for t in dc.snapshot_tokens if t // dc.batch_size < n_steps}))
    return TrainerConfig(recipe=dc.recipe, lr=dc.lr, l1_coeff=dc.lam if dc.lam is not None else 0.0,
                         prefixes=get_recipe(dc.recipe).family_layout(dc.sizes).prefixes,
                         k=dc.k if get_recipe(dc.recipe).uses_k else None, n_steps=n_steps, batch_size=dc.batch_size,
                         matmul_dtype=dc.matmul_dtype, seed=dc.seed, snapshot_steps=snaps,
                         checkpoint_every=dc.checkpoint_every, lr_decay_frac=dc.lr_decay_frac, target_l0=dc.target_l0,
                         **({} if dc.l0_gain is None else {"l0_gain": dc.l0_gain}),
                         l1_warmup_frac=None if dc.l1_warmup_tokens is None
                         else min(1.0, dc.l1_warmup_tokens / (n_steps * dc.batch_size)))


def family_artifact(cfg: Config, store) -> Artifact:
    """The cache entry of the family trained on activation ``store`` (also used by ``distributed``).

    A recipe with a ``version`` above 0 adds it to the key (the other recipes' keys are unchanged)."""
    from .train import get_recipe

    params = {"dict": cfg.dict.key_dict(), "d_in": store.d}
    if get_recipe(cfg.dict.recipe).version:
        params["recipe_version"] = get_recipe(cfg.dict.recipe).version
    return _cache(cfg).artifact("dicts", params, {"acts": store.folder.name}, VERSIONS["dicts"])


def new_family(cfg: Config, d_in: int) -> list:
    """Freshly initialised dictionaries the family trains, in ``cfg.dict.sizes`` order: one per size, or
    what the recipe's ``family_layout`` says (a nested recipe: one of the largest size, whose prefixes
    are the other sizes and are saved as dictionaries of their own when training ends)."""
    from .sae import SAEConfig, SparseAutoencoder
    from .train import get_recipe

    recipe = get_recipe(cfg.dict.recipe)
    return [SparseAutoencoder(SAEConfig(d_in=d_in, n_features=n, architecture=recipe.architecture,
                                        k=cfg.dict.k if recipe.uses_k else None, seed=cfg.dict.seed))
            for n in recipe.family_layout(cfg.dict.sizes).trained]


def finish_family(work: Path, tcfg, res: dict) -> None:
    """Write the prefix dictionaries of a nested recipe (again: per-process parts publish only the
    trained members), the family's train summary, and drop its resume state (checkpoints, parts)."""
    import shutil

    from .train.checkpoint import write_family_views

    write_family_views(work, {name: rec["n_features"] for name, rec in res["saes"].items()}, tcfg)

    atomic_write_json(work / "train_summary.json", {"trainer": tcfg.to_dict(), **res})
    for f in [*work.glob("checkpoint*"), work / "parts"]:
        if f.is_dir():
            shutil.rmtree(f)
        elif f.exists():
            f.unlink()


@dataclass
class FamilyBuild:
    """What building the family of LM ``seed`` takes: its training store, its cache entry and the
    trainer config; ``ready`` when the entry is already complete (one process or many,
    ``distributed.train_pipeline_family``, build it from this)."""

    store: object  # activations.ActivationStore
    artifact: Artifact
    tcfg: object  # train.TrainerConfig
    ready: bool


def family_build(cfg: Config, seed: int, progress: bool = True) -> FamilyBuild:
    """Build (or reuse) everything upstream of the family of LM ``seed`` and say whether it is cached."""
    store = get_acts(cfg, seed, progress=progress)
    art = family_artifact(cfg, store)
    return FamilyBuild(store, art, trainer_config(cfg), _ready(art))


def get_family(cfg: Config, seed: int, progress: bool = True) -> Family:
    from .activations import StoreSource
    from .train import train_family

    build = family_build(cfg, seed, progress)
    store, art, tcfg = build.store, build.artifact, build.tcfg
    if not build.ready:
        work = art.begin(resume=True)
        resumed = (work / "checkpoint.json").exists()
        _say(f"training dictionaries {list(cfg.dict.sizes)} ({cfg.dict.recipe}) on LM seed {seed}: "
             f"{tcfg.n_steps * tcfg.batch_size:,} tokens{' (resuming)' if resumed else ''} ...")
        source = StoreSource(store, tcfg.batch_size, seed=cfg.dict.seed)
        res = train_family(new_family(cfg, store.d), source, tcfg, out_dir=work, device=cfg.device,
                           progress=progress)
        finish_family(work, tcfg, res)
        art.seal()
    return Family(art.path, art.key, seed, tuple(cfg.dict.sizes))


# --- feature activations and dictionary metrics ------------------------------------------------

@dataclass
class FeatureSet:
    """Feature activations of one dictionary over the analysis tokens, with its metrics."""

    folder: Path
    key: str

    def acts(self):
        import scipy.sparse as sp

        return read_artifact_file(self.folder / "features.npz", sp.load_npz)

    @property
    def stats(self) -> dict:
        return json.loads((self.folder / "stats.json").read_text())

    @property
    def counts(self) -> np.ndarray:
        return read_artifact_file(self.folder / "counts.npy", np.load)


def get_features(cfg: Config, seed: int, n: int, snapshot_step: int | None = None, progress: bool = True) -> FeatureSet:
    """Feature activations of dictionary ``n`` of LM ``seed`` over the analysis split, plus its metrics."""
    import scipy.sparse as sp
    import torch

    from .features import feature_acts, firing_counts
    from .metrics import density_stats

    from .precision import matmul_dtype

    fam = get_family(cfg, seed, progress)
    store = get_acts(cfg, seed, "analysis", progress)
    train_store = get_acts(cfg, seed, progress=progress)
    # the encoder GEMM in the precision the dictionaries were trained with (bf16 where it is fast)
    mm_dtype = matmul_dtype(cfg.dict.matmul_dtype, cfg.device)
    art = _cache(cfg).artifact("features", {"n": n, "snapshot_step": snapshot_step, "eval_tokens": cfg.lm.eval_tokens,
                                            "ultralow_density": cfg.analysis.ultralow_density,
                                            "matmul_dtype": str(mm_dtype).replace("torch.", "")},
                               {"dicts": fam.key, "analysis_acts": store.folder.name}, VERSIONS["features"])
    if not _ready(art):
        work = art.begin(resume=False)
        sae = fam.sae(n, snapshot_step, device=cfg.device)
        _say(f"feature activations of {fam.sae_id(n)}{'' if snapshot_step is None else f' @step {snapshot_step}'} "
             f"over {len(store):,} analysis tokens ...")
        F = feature_acts(sae, store, device=cfg.device, progress=progress, matmul_dtype=mm_dtype)
        sp.save_npz(work / "features.npz", F, compressed=False)
        counts = firing_counts(F)
        np.save(work / "counts.npy", counts)
        ev = _evaluate(cfg, seed, sae, train_store, progress)
        stats = {"sae_id": fam.sae_id(n), "n_features": n, "snapshot_step": snapshot_step, **ev,
                 **density_stats(counts, len(store), cfg.analysis.ultralow_density),
                 "l0_analysis": float(F.nnz / len(store))}
        atomic_write_json(work / "stats.json", stats)
        art.seal()
    return FeatureSet(art.path, art.key)


def _evaluate(cfg: Config, seed: int, sae, train_store, progress: bool) -> dict:
    """Reconstruction and loss-recovered metrics of ``sae`` in LM ``seed`` on the validation split."""
    import torch

    from .metrics import evaluate_sae

    lm = get_lm(cfg, seed, progress)
    data = get_tokens(cfg, progress)
    return evaluate_sae(lm.model(cfg.device), sae, data.tokens("val"), cfg.lm.eval_tokens,
                        torch.from_numpy(train_store.mean_acts), device=cfg.device)


def sae_metrics(cfg: Config, seed: int, n: int, snapshot_step: int | None = None, progress: bool = True) -> dict:
    """``evaluate_sae`` figures (FVU, L0, loss recovered, ...) of dictionary ``n`` of LM ``seed``, cached.

    The same numbers as in ``get_features(...).stats``, for callers that never build the
    analysis-set feature activations (the streamed analysis sets).
    """
    fam = get_family(cfg, seed, progress)
    train_store = get_acts(cfg, seed, progress=progress)
    art = _cache(cfg).artifact("sae_eval", {"n": n, "snapshot_step": snapshot_step, "eval_tokens": cfg.lm.eval_tokens},
                               {"dicts": fam.key}, VERSIONS["sae_eval"])
    if not _ready(art):
        work = art.begin(resume=False)
        ev = _evaluate(cfg, seed, fam.sae(n, snapshot_step, device=cfg.device), train_store, progress)
        atomic_write_json(work / "stats.json", {"sae_id": fam.sae_id(n), "n_features": n,
                                                "snapshot_step": snapshot_step, **ev})
        art.seal()
    return json.loads((art.path / "stats.json").read_text())


# --- logit effects -------------------------------------------------------------------------------

@dataclass
class LogitEffects:
    """Direct logit effects of one dictionary's features (or of the neurons) of LM ``seed``."""

    folder: Path
    key: str

    @property
    def info(self) -> dict:
        return json.loads((self.folder / "info.json").read_text())

    def matrix(self) -> np.ndarray:
        """float32 ``[n, vocab]``; only kept up to ``effects.DENSE_LIMIT`` entries (else use :meth:`top`)."""
        f = self.folder / "effects.npy"
        if not f.is_file():
            raise PipelineError(f"logit effects {self.info['shape']} are kept as top-{self.info['k']} rows only; "
                                "use LogitEffects.top()")
        return np.load(f)

    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's top-k by magnitude: int32 ``index [n, k]``, float32 ``value [n, k]``."""
        if (self.folder / "effects.npy").is_file():
            from .effects import top_of

            return top_of(self.matrix(), self.info["k"])
        return np.load(self.folder / "top_index.npy"), np.load(self.folder / "top_value.npy")


def get_logit_effects(cfg: Config, seed: int, n: int | None = None, snapshot_step: int | None = None,
                      progress: bool = True, k: int = 256) -> LogitEffects:
    """Logit effects ``[n, vocab]`` of dictionary ``n`` of LM ``seed`` (``n=None``: its ``d_mlp`` neurons).

    Decoder rows through the LM's direct path (MLP output weights, final LN, unembedding); the whole
    matrix while it has at most ``effects.DENSE_LIMIT`` entries, else each row's top ``k`` by magnitude.
    """
    from .effects import DENSE_LIMIT, logit_effects, top_effects

    lm = get_lm(cfg, seed, progress)
    deps = {"lm": lm.key}
    if n is not None:
        fam = get_family(cfg, seed, progress)
        deps["dicts"] = fam.key
    art = _cache(cfg).artifact("effects", {"n": n, "snapshot_step": snapshot_step, "k": k}, deps, VERSIONS["effects"])
    if not _ready(art):
        work = art.begin(resume=False)
        path = {name: w.numpy() for name, w in lm.model().direct_path().items()}
        W_dec = (np.eye(cfg.model.d_mlp, dtype=np.float32) if n is None
                 else fam.sae(n, snapshot_step).W_dec.detach().numpy())  # [n, d_mlp]
        shape = [int(W_dec.shape[0]), int(path["W_U"].shape[1])]
        if shape[0] * shape[1] <= DENSE_LIMIT:
            np.save(work / "effects.npy", logit_effects(W_dec, path["W_out"], path["W_U"], path["ln_scale"]))
        else:
            idx, val = top_effects(W_dec, path["W_out"], path["W_U"], path["ln_scale"], k=k)
            np.save(work / "top_index.npy", idx)
            np.save(work / "top_value.npy", val)
        atomic_write_json(work / "info.json", {"shape": shape, "k": k, "seed": seed, "n": n,
                                               "snapshot_step": snapshot_step})
        art.seal()
    return LogitEffects(art.path, art.key)


# --- records: small JSON results of analyses, cached like every stage -----------------------------

@dataclass
class Record:
    """One JSON record (e.g. a scaling grid point) in the cache: a folder with a manifest, sealed
    atomically like every stage, keyed by what the record was computed from."""

    artifact: Artifact

    @property
    def path(self) -> Path:
        return self.artifact.path / "record.json"

    def read(self) -> dict | None:
        """The record when it is cached and intact, else None."""
        return json.loads(self.path.read_text()) if _ready(self.artifact) else None

    def write(self, record: dict) -> dict:
        """Seal ``record`` as this entry (replacing any stale copy); returns it."""
        work = self.artifact.begin(resume=False)
        atomic_write_json(work / "record.json", record)
        self.artifact.seal()
        return record


def get_record(cfg: Config, stage: str, params: dict, inputs: dict[str, str], version: int) -> Record:
    """The cache entry of a record of ``stage`` computed with ``params`` from the artifacts ``inputs``
    (stage keys); ``version``: the computing code's version, bumped when its figures would change."""
    return Record(_cache(cfg).artifact(stage, params, inputs, version))


def get_joint_map(cfg: Config, family_keys: dict[str, str], settings: dict, build, progress: bool = True):
    """A joint map of decoder directions (``analyses.maps.joint_map``'s DataFrame), cached.

    ``family_keys``: ``{run: family key}`` of the dictionaries mapped; ``settings``: everything else
    the map depends on (sizes, UMAP and HDBSCAN settings, which rows); ``build()`` makes the map
    when the cache has none. At the paper's sizes the map takes over an hour, so a study that
    fails after it finds it here on the next run.
    """
    import pandas as pd

    deps = {f"dicts_{r}": k for r, k in sorted(family_keys.items())}
    art = _cache(cfg).artifact("maps", settings, deps, VERSIONS["maps"])
    if _ready(art):
        df = read_artifact_file(art.path / "map.parquet", pd.read_parquet)
        df.attrs.update(read_artifact_file(art.path / "attrs.json", lambda p: json.loads(p.read_text())))
        return df
    df = build()
    work = art.begin(resume=False)
    df.to_parquet(work / "map.parquet", index=False)
    atomic_write_json(work / "attrs.json", dict(df.attrs))
    art.seal()
    if progress:
        _say(f"joint map of {len(df):,} directions cached in {art.path}")
    return df

