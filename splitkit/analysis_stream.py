"""Universality over analysis sets too large to store: one streaming pass, nothing written.

The in-memory path (``pipeline.get_acts`` -> ``get_features`` -> ``correlation``) keeps the analysis
activations on disk (CSR, ~80 bytes per token and run: ~1.3 GB per run at 16M tokens) and the feature
activations in memory. Past a few million tokens neither fits this machine, so this module reads the
token stream once, chunk by chunk::

    tokens --LM A--> neurons A --SAE A_i--> features A_i  \\
                                                           >-- CrossMoments (real, shuffled)
    tokens --LM B--> neurons B --SAE B_i--> features B_i  /

and keeps only correlation sums (:class:`splitkit.correlation.CrossMoments`): ``8 * n_a * n_b`` bytes per
compared pair, whatever the number of tokens. Every dictionary pair of a grid (all sizes, all
snapshots) shares the one LM pass.

The chance level pairs A's token ``t`` with B's token ``perm[t]`` for a seeded permutation of each
chunk (``chunk_tokens``, 1M tokens by default: hundreds of documents), where the in-memory path
permutes the whole set; both break every real co-firing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .activations import iter_window_acts
from .features import encode_sparse
from .correlation import CrossMoments
from .model import Transformer
from .sae import SparseAutoencoder


@dataclass
class StreamResult:
    """Per-unit figures of A's units against B's over the stream."""

    corr: np.ndarray  # float64 [n_a]: best correlation with any B unit (NaN: dead)
    best: np.ndarray  # int64 [n_a]: that B unit (-1: none)
    chance: np.ndarray  # float64 [n_a]: the same with B's tokens shuffled
    counts: np.ndarray  # int64 [n_a]: tokens on which each A unit fired
    counts_b: np.ndarray  # int64 [n_b]
    n_tokens: int

    @property
    def l0(self) -> float:
        return float(self.counts.sum() / max(1, self.n_tokens))


@torch.no_grad()
def stream_universality(model_a: Transformer, model_b: Transformer, tokens: np.ndarray,
                        pairs: dict[str, tuple[SparseAutoencoder, SparseAutoencoder]], *,
                        chunk_tokens: int = 1 << 20, shuffle_seed: int = 0, batch_size: int = 128,
                        matmul_dtype: torch.dtype = torch.float32, device: str = "cpu",
                        progress: bool = True) -> tuple[dict[str, StreamResult], dict]:
    """Best-match correlations of every dictionary pair and of the neurons over ``tokens``.

    Args:
        model_a, model_b: the two LMs (same ``n_ctx`` and ``d_mlp``).
        tokens: ``[n_win * n_ctx]`` token stream, read as consecutive ``n_ctx`` windows.
        pairs: ``name -> (sae_a, sae_b)``, dictionaries of LM A and LM B to compare.
        chunk_tokens: tokens per chunk (rounded to whole windows); also the span of the shuffle.
        matmul_dtype: encoder GEMM precision (as in ``features.feature_acts``).

    Returns:
        ``({name: StreamResult, ..., "neurons": StreamResult}, timing)``.
    """
    from .progress import bar as tqdm

    T = model_a.cfg.n_ctx
    d = model_a.cfg.d_mlp
    if model_b.cfg.n_ctx != T or model_b.cfg.d_mlp != d:
        raise ValueError("models A and B must have the same n_ctx and d_mlp")
    for name, (sa, sb) in pairs.items():
        if sa.d_in != d or sb.d_in != d:
            raise ValueError(f"dictionary pair {name!r}: d_in {sa.d_in}/{sb.d_in} does not match d_mlp={d}")
    n_win = len(tokens) // T
    if n_win < 1:
        raise ValueError(f"the token stream ({len(tokens)} tokens) holds no {T}-token window")
    win_per_chunk = max(1, chunk_tokens // T)
    moments = {"neurons": (CrossMoments(d, d), CrossMoments(d, d))}
    for name, (sa, sb) in pairs.items():
        moments[name] = (CrossMoments(sa.n_features, sb.n_features), CrossMoments(sa.n_features, sb.n_features))
    rng = np.random.default_rng(shuffle_seed)
    timing = {"lm_s": 0.0, "encode_s": 0.0, "moments_s": 0.0}
    bar = tqdm(total=n_win * T, desc="analysis stream", unit="tok", unit_scale=True, disable=not progress)
    for w0 in range(0, n_win, win_per_chunk):
        starts = np.arange(w0, min(w0 + win_per_chunk, n_win), dtype=np.int64) * T
        t0 = time.perf_counter()
        # rounded to float16 like the activation store (both paths see the same values), held as
        # float32 so the four CrossMoments updates below do not each widen it again
        xa, xb = (np.concatenate([a for _, a in iter_window_acts(m, tokens, starts, batch_size, device)])
                  .astype(np.float16).astype(np.float32) for m in (model_a, model_b))
        perm = rng.permutation(len(xa))
        t1 = time.perf_counter()
        timing["lm_s"] += t1 - t0
        moments["neurons"][0].update(xa, xb)
        moments["neurons"][1].update(xa, xb, perm)
        timing["moments_s"] += time.perf_counter() - t1
        for name, (sa, sb) in pairs.items():
            t2 = time.perf_counter()
            fa = encode_sparse(sa, xa, device=device, matmul_dtype=matmul_dtype)
            fb = encode_sparse(sb, xb, device=device, matmul_dtype=matmul_dtype)
            t3 = time.perf_counter()
            moments[name][0].update(fa, fb)
            moments[name][1].update(fa, fb, perm)
            timing["encode_s"] += t3 - t2
            timing["moments_s"] += time.perf_counter() - t3
        bar.update(len(xa))
    bar.close()
    out = {}
    for name, (real, shuf) in moments.items():
        corr, best = real.max_correlation()
        chance, _ = shuf.max_correlation()
        out[name] = StreamResult(corr, best, chance, real.nnz_a, real.nnz_b, real.n_tokens)
    timing["chunk_tokens"] = win_per_chunk * T
    return out, timing
