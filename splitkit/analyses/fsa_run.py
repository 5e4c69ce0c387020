"""The automaton study's analysis: :mod:`splitkit.analyses.fsa` wired to the cached pipeline.

For each run (A, B) at one dictionary size: the feature graph and the neuron graph over the
analysis store's tokens, their automata, transition tables of the top ones, the predictive check
on held-out positions; then, across the two runs, the share of A's automaton edges found again in
B through the universality matches against shuffled matches. Returns data; writes nothing
(:mod:`splitkit.report.fsa` does).

Pairs (t, t+1). The analysis store is a sequence of ``n_ctx``-token windows of the analysis split
(taken in order); position t pairs with t+1 only inside one window (``t % n_ctx != n_ctx - 1``),
inside one document (``tokens[t+1]`` is not the end-of-text token that starts the next one) and
before the end: :func:`next_ok_of`.

Neurons. Their activations are read from the store shard by shard and kept as CSR above
``FSAConfig.neuron_threshold`` (about 3% of the entries of the stdlib LMs' neurons are positive),
so the neuron graph takes the same sparse path as the features and no dense ``[n_tokens, 512]``
copy is made. Their logit effects are the cached ``effects`` stage at ``n=None``.

Predictive check. The graph is fitted again on the first ``fit_frac`` of the tokens alone (no null),
its automata are found, and :func:`~splitkit.analyses.fsa.predictive_table` scores them on the
remaining positions: the held-out tokens never shaped the automata it tests.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from .. import correlation
from ..config import Config, FSAConfig
from . import fsa


def next_ok_of(tokens: np.ndarray, n_ctx: int, eot: int) -> np.ndarray:
    """bool ``[n_tokens]``: True where (t, t+1) is a pair inside one window and one document."""
    tokens = np.asarray(tokens)
    n = len(tokens)
    ok = np.ones(n, bool)
    ok[n_ctx - 1 :: n_ctx] = False  # window ends: t+1 starts another window
    if n > 1:
        ok[:-1] &= tokens[1:] != eot  # t+1 opens the next document
    if n:
        ok[-1] = False
    return ok


def neuron_csr(store, n_tokens: int, threshold: float, chunk: int = 1 << 18) -> sp.csr_matrix:
    """The store's first ``n_tokens`` neuron activations above ``threshold`` as float32 CSR ``[n_tokens, d_mlp]``."""
    parts = []
    for t0 in range(0, n_tokens, chunk):
        x = store.slice(t0, min(n_tokens, t0 + chunk))
        x[x <= threshold] = 0
        parts.append(sp.csr_matrix(x))
    return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, store.d), dtype=np.float32)


def analyse_basis(acts, token_ids, next_ok, logit_eff, fcfg: FSAConfig, decode=None) -> dict:
    """One basis (features or neurons) of one run: graph with null, automata, transition tables of the
    top ``n_top``, and the predictive check of a graph fitted on the first ``fit_frac`` of the tokens.

    Returns ``{graph: FSAGraph, automata, transitions: {rank: DataFrame}, predictive, promoted_ids [n, 5]
    (the tokens each unit raises most), fit: {...}, timings}``.
    """
    t0 = time.perf_counter()
    fg = fsa.build_graph(acts, token_ids, next_ok, logit_eff, fcfg, decode=decode, null=True)
    t1 = time.perf_counter()
    auto = fsa.find_automata(fg)
    trans = {int(r["automaton"]): fsa.transition_table(fg, r) for _, r in auto.head(fcfg.n_top).iterrows()}
    t2 = time.perf_counter()
    cut = int(fcfg.fit_frac * acts.shape[0])
    ok_fit = np.asarray(next_ok[:cut]).copy()
    if cut:
        ok_fit[-1] = False
    fit = fsa.build_graph(acts[:cut], token_ids[:cut], ok_fit, logit_eff, fcfg, decode=decode, null=False)
    fit_auto = fsa.find_automata(fit)
    pred = fsa.predictive_table(acts, next_ok, fit_auto, fcfg.fit_frac, fcfg.active_threshold, fcfg.max_predict)
    t3 = time.perf_counter()
    return {"graph": fg, "automata": auto, "transitions": trans, "predictive": pred,
            "promoted_ids": fsa.promoted_tokens(logit_eff, 5),
            "fit": {"cut": cut, "n_edges": int(fit.graph.number_of_edges()), "n_automata": int(len(fit_auto)),
                    "automata": fit_auto},
            "timings": {"graph_s": t1 - t0, "automata_s": t2 - t1, "predictive_s": t3 - t2}}


def _automaton_edges(auto) -> list:
    return sorted({(int(a), int(b)) for es in auto["edges"] for a, b in es}) if len(auto) else []


def cross_seed(res_a: dict, res_b: dict, best_b: np.ndarray, fcfg: FSAConfig) -> dict:
    """A's automata mapped onto B through ``best_b [n_a]`` (A's unit -> its best match in B, -1 none).

    ``share``: :func:`~splitkit.analyses.fsa.cross_seed_share` over the union of A's automaton edges,
    with its shuffled-matching baseline; ``both``: :func:`~splitkit.analyses.fsa.automata_in_both`.
    """
    edges = _automaton_edges(res_a["automata"])
    share = fsa.cross_seed_share(edges, res_b["graph"].graph, best_b, n_shuffles=fcfg.n_shuffles, seed=fcfg.null_seed)
    # the same through every kept edge of A, not only those inside automata
    share_all = fsa.cross_seed_share(res_a["graph"].graph, res_b["graph"].graph, best_b, n_shuffles=fcfg.n_shuffles,
                                     seed=fcfg.null_seed)
    both = fsa.automata_in_both(res_a["automata"], res_b["automata"], res_b["graph"].graph, best_b)
    return {"share": share, "share_all_edges": share_all, "both": both}


def _eot_id(tok) -> int:
    from ..tokenizer import EOT

    i = tok.token_to_id(EOT)
    return -1 if i is None else int(i)


def run_fsa(cfg: Config, fcfg: FSAConfig, runs=("A", "B"), size: int | None = None, progress: bool = True) -> dict:
    """Automata of features and neurons for each of ``runs`` (``"A"``, ``"B"``) at dictionary ``size``
    (default: the universality study's, ``cfg.dict.sizes[0]``), across seeds when both runs are given.

    Returns ``{size, n_tokens, runs: {name: {seed, sae_id, sae_stats, bases: {features: ..., neurons: ...},
    compare}}, cross_seed: {features: ..., neurons: ...} (both runs only), config, timings}``, the bases
    as :func:`analyse_basis` returns them and ``compare`` from :func:`~splitkit.analyses.fsa.compare_bases`.
    """
    from .. import pipeline as P
    from ..progress import bar
    from ..tokenizer import decode_tokens

    runs = tuple(runs)
    if not runs or any(r not in ("A", "B") for r in runs) or len(set(runs)) != len(runs):
        raise ValueError(f"runs must be A, B or both (each once), got {','.join(map(str, runs)) or 'none'}")
    n = int(size or cfg.dict.sizes[0])
    if n <= 0:
        raise ValueError(f"size must be a positive number of features, got {n}")
    data = P.get_tokens(cfg, progress)
    tok = data.tokenizer
    eot = _eot_id(tok)

    def decode(ids):
        return decode_tokens(tok, ids)

    t_start = time.perf_counter()
    out = {"size": n, "runs": {}, "config": fcfg.to_dict()}
    seeds = {"A": cfg.seed_a, "B": cfg.seed_b}
    best = {}
    token_ids = None
    with bar(total=len(runs) * 2, desc="fsa graphs", unit="graph", disable=not progress) as pb:
        for name in runs:
            seed = seeds[name]
            store = P.get_acts(cfg, seed, "analysis", progress)
            toks = np.asarray(store.tokens).astype(np.int64)
            T = len(toks) if fcfg.n_tokens is None else min(len(toks), fcfg.n_tokens)
            toks = toks[:T]
            if token_ids is not None and not np.array_equal(toks, token_ids):
                raise RuntimeError("analysis stores of A and B hold different tokens; clear the cache folder 'acts'")
            token_ids = toks
            ok = next_ok_of(toks, cfg.model.n_ctx, eot)
            fs = P.get_features(cfg, seed, n, progress=progress)
            F = fs.acts()
            F = F[:T] if T < F.shape[0] else F
            L = P.get_logit_effects(cfg, seed, n, progress=progress).matrix()
            NA = neuron_csr(store, T, fcfg.neuron_threshold)
            LN = P.get_logit_effects(cfg, seed, None, progress=progress).matrix()
            bases = {}
            for basis, acts, logit, thr in (("features", F, L, fcfg.active_threshold),
                                            ("neurons", NA, LN, fcfg.neuron_threshold)):
                pb.set_postfix_str(f"{name} {basis}")
                bases[basis] = analyse_basis(acts, toks, ok, logit, fcfg.replace(active_threshold=thr), decode)
                pb.update(1)
            out["runs"][name] = {
                "seed": seed, "sae_id": P.get_family(cfg, seed, progress).sae_id(n), "sae_stats": fs.stats,
                "n_pairs": bases["features"]["graph"].n_pairs, "bases": bases,
                "compare": fsa.compare_bases({b: (r["graph"], r["automata"]) for b, r in bases.items()})}
            if len(runs) == 2:  # kept for the matching
                best[name] = (F, NA)
            del F, NA, L, LN
    out["n_tokens"] = int(len(token_ids))
    if len(runs) == 2:
        t0 = time.perf_counter()
        (FA, NA), (FB, NB) = best["A"], best["B"]
        out["cross_seed"] = {}
        for i, basis in enumerate(("features", "neurons")):
            X, Y = (FA, FB) if i == 0 else (NA, NB)
            # A's unit -> its most correlated unit of B over the same tokens: the universality match
            top = correlation.max_correlation(X, Y, k=1, dtype=np.float32)
            b = top.index[:, 0].astype(np.int64)
            cs = cross_seed(out["runs"]["A"]["bases"][basis], out["runs"]["B"]["bases"][basis], b, fcfg)
            cs["best_b"] = b
            cs["match_corr"] = top.value[:, 0].astype(np.float64)
            out["cross_seed"][basis] = cs
        out["timings_cross_seed_s"] = time.perf_counter() - t0
    out["wall_s"] = time.perf_counter() - t_start
    return out
