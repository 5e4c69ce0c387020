"""The predictive check: does an automaton fit on the first tokens predict its next state on the rest?"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .edges import _rows_of

def predictive_check(acts, next_ok, states, edges, fit_frac: float = 0.8, active_threshold: float = 0.0) -> dict:
    """Does the automaton predict which of its states fires next, on held-out positions?

    Positions split by order: the first ``fit_frac`` of the tokens fit, the rest test (the graph
    itself should be built on the fit part, ``acts[:cut]``, for a clean claim). Evaluated are the
    pairs (t, t+1) with ``next_ok[t]``, a state active at t (the most active one if several) and a
    state active at t+1. The automaton predicts, for current state X, the out-neighbour Y (among
    its ``edges``) seen most often after X on the fit part (X without an out-edge: the baseline's
    guess); the baseline always predicts the state most often active at t+1 on the fit part. A
    prediction is right when the predicted state is active at t+1.

    Returns ``{accuracy, baseline_accuracy, n_fit, n_test, cut}``.
    """
    states = [int(s) for s in states]
    if len(states) < 2:
        raise ValueError("an automaton needs at least two states")
    if not 0 < fit_frac < 1:
        raise ValueError(f"fit_frac must be in (0, 1), got {fit_frac}")
    next_ok = np.asarray(next_ok, dtype=bool)
    n_tok = acts.shape[0]
    if len(next_ok) != n_tok:
        raise ValueError(f"next_ok needs n_tokens={n_tok} entries, got {len(next_ok)}")
    k = len(states)
    if sp.issparse(acts):
        S = sp.csr_matrix(acts)[:, states].astype(np.float32)  # [n_tokens, k], stays sparse
    else:
        S = sp.csr_matrix(np.asarray(acts[:, states], dtype=np.float32))
    S.data[S.data <= active_threshold] = 0
    S.eliminate_zeros()
    any_on = np.diff(S.indptr) > 0
    cur = np.full(n_tok, -1, np.int64)
    rows = np.flatnonzero(any_on)
    if len(rows):  # the most active state of each row: the largest entry of the row's slice
        r_of = _rows_of(S)
        order = np.lexsort((-S.data, r_of))
        first = S.indptr[rows]
        cur[rows] = S.indices[order[first]]
    t = np.flatnonzero(next_ok[:-1] & (cur[:-1] >= 0) & any_on[1:])
    cut = int(fit_frac * n_tok)
    fit, test = t[t < cut], t[t >= cut]

    B = S.copy()
    B.data[:] = 1.0  # which states fire, [n_tokens, k] sparse: no dense [positions, k] array at large k

    def fires(pos, col):  # bool [len(pos)]: state col[i] fires at pos[i] + 1
        R = B[pos + 1]
        return np.asarray(R[np.arange(len(pos)), col]).ravel() > 0

    nxt_fit = B[fit + 1]  # [len(fit), k]
    cur_1h = sp.csr_matrix((np.ones(len(fit)), (cur[fit], np.arange(len(fit)))), shape=(k, len(fit)))
    trans = np.asarray((cur_1h @ nxt_fit).todense())  # [k, k] transitions counted on the fit part
    base = int(np.asarray(nxt_fit.sum(0)).ravel().argmax()) if len(fit) else 0
    pos = {s: i for i, s in enumerate(states)}
    allowed = np.zeros((k, k), bool)
    for a, b in edges:
        if int(a) in pos and int(b) in pos:
            allowed[pos[int(a)], pos[int(b)]] = True
    scored = np.where(allowed, trans, -1.0)
    pred = np.where(allowed.any(1), scored.argmax(1), base)
    acc = float(fires(test, pred[cur[test]]).mean()) if len(test) else float("nan")
    base_acc = float(fires(test, np.full(len(test), base)).mean()) if len(test) else float("nan")
    return {"accuracy": acc, "baseline_accuracy": base_acc, "n_fit": int(len(fit)), "n_test": int(len(test)),
            "cut": cut}


def predictive_table(acts, next_ok, automata: pd.DataFrame, fit_frac: float = 0.8, active_threshold: float = 0.0,
                     max_automata: int = 50) -> pd.DataFrame:
    """:func:`predictive_check` for the first ``max_automata`` rows of :func:`find_automata`.

    Columns: ``automaton, kind, n_states, accuracy, baseline_accuracy, gain (accuracy - baseline),
    n_fit, n_test``.
    """
    rows = []
    for r in automata.head(max_automata).itertuples(index=False):
        res = predictive_check(acts, next_ok, r.states, r.edges, fit_frac, active_threshold)
        rows.append({"automaton": int(r.automaton), "kind": r.kind, "n_states": int(r.n_states),
                     "accuracy": res["accuracy"], "baseline_accuracy": res["baseline_accuracy"],
                     "gain": res["accuracy"] - res["baseline_accuracy"], "n_fit": res["n_fit"], "n_test": res["n_test"]})
    return pd.DataFrame(rows, columns=["automaton", "kind", "n_states", "accuracy", "baseline_accuracy", "gain", "n_fit",
                                       "n_test"])
