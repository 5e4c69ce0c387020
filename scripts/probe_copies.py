"""Probe: what makes the default l1_decnorm dictionaries hold near-copies, and what removes them.

    python scripts/probe_copies.py NAME '{"penalty": "log", "s": 0.5, "l1_coeff": 2e-3}' [--seeds 0,1]
    python scripts/probe_copies.py NAME '{...}' --universality --analysis-tokens 1000000  # + matching views
    python scripts/probe_copies.py default '{}' --pipeline --only-universality --analysis-tokens 1000000
    python scripts/probe_copies.py table                               # the rows so far, as markdown

Trains one 2,048-feature dictionary per LM seed on the default preset's cached activations (the
pipeline builds them if missing) with the stock trainer, optionally patched inside this script:

* ``penalty``: "l1" (the recipe's lambda * sum_i f_i ||d_i||), or a concave function of each
  feature's contribution norm u = f_i ||d_i||: "log" phi(u) = s log(1 + u/s), "pow"
  phi(u) = (u + eps)^p - eps^p, "tanh" phi(u) = s tanh(u/s). Loss = MSE + lambda sum_i phi(u_i).
  The gradient on an active entry is lambda phi'(u) ||d_i|| (not a constant), so splitting a feature
  into copies costs more than keeping one (2 phi(u/2) > phi(u)); phi'(0) = 1 for log and tanh, so
  lambda keeps the L1 scale for small activations.
* ``init``: "default"; "enc_scale": W_enc = c W_dec^T (``enc_scale`` c); "indep": W_enc drawn
  independently of W_dec at the same norm.
* ``dedup``: {"every": steps, "until": fraction of the run, "cos": 0.9, "corr": 0.5}: every ``every``
  steps, decoder pairs with cosine > cos whose activations on the last 8 batches correlate above
  corr are merged: the member that fired most is kept, the others get the direction of an input
  drawn with probability proportional to its squared reconstruction error (the paper's resampling;
  decoder row at the median live decoder norm, encoder column at 0.2 x the mean live encoder norm,
  b_enc 0, Adam moments reset).
* ``merge``: {"every": 25, "from": 0.2, "until": 0.8, "corr": 0.9, "min_count": 20}: merge groups of
  features whose activations on the last 8 batches correlate above corr into their most frequent
  member (its decoder row takes the others' output, least-squares scaled); the others are
  re-initialised from badly reconstructed inputs (``merge_step``).
* ``resample``: {"fracs": [0.2, 0.4], "window": 100}: at these fractions of the run, features that
  fired on no token in the last ``window`` steps are resampled as the paper does
  (``trainer._resample``), the new decoder rows then scaled to the median live decoder norm.
* any ``DictConfig`` field (``l1_coeff``, ``lr``, ``n_tokens``, ``l1_warmup_tokens``,
  ``lr_decay_frac``) through ``cfg.with_overrides``.

Prints one JSON line per seed and appends it to ``results/copies/probe.jsonl``: L0, loss recovered
(zero / mean ablation, validation split), FVU, dead share and twin statistics on the first 1M
analysis tokens (``splitkit.analyses.redundancy``), the decoder-twin share along training, and the
training seconds. Trained dictionaries are kept in ``results/copies/NAME/seed{s}/`` (safetensors).
``--universality`` adds the A-vs-B matching views on the preset's analysis tokens (many-to-one over
the paper's count, one-to-one, mutual, de-duplicated) and the neurons' median.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from splitkit import pipeline as P
from splitkit import trainer as T
from splitkit.activations import StoreSource
from splitkit.analyses import redundancy as R
from splitkit.config import get_preset
from splitkit.features import encode_sparse
from splitkit.metrics import evaluate_sae
from splitkit.sae import SparseAutoencoder
from splitkit.universality import counted_mask

OUT = Path("results/copies")
TWIN_TOKENS = 1_000_000

# ------------------------------------------------------------------------------------------------
# Concave penalties: patched copies of the trainer's step functions
# ------------------------------------------------------------------------------------------------
_PEN = {"phi": None, "dphi": None}
_ORIG = {"sae_step": T.sae_step, "_dense_relu_step": T._dense_relu_step}


def set_penalty(kind: str, s: float = 1.0, p: float = 0.5, eps: float = 0.1) -> None:
    if kind == "log":
        _PEN["phi"] = lambda u: s * torch.log1p(u / s)
        _PEN["dphi"] = lambda u: 1.0 / (1.0 + u / s)
    elif kind == "pow":
        _PEN["phi"] = lambda u: (u + eps) ** p - eps ** p
        _PEN["dphi"] = lambda u: p * (u + eps) ** (p - 1)
    elif kind == "tanh":
        _PEN["phi"] = lambda u: s * torch.tanh(u / s)
        _PEN["dphi"] = lambda u: 1.0 - torch.tanh(u / s) ** 2
    else:
        raise ValueError(f"unknown penalty {kind!r}")


def _patched(fn, edits: list[tuple[str, str]]):
    src = inspect.getsource(fn)
    for old, new in edits:
        if src.count(old) != 1:
            raise RuntimeError(f"patch target not found once in {fn.__name__}: {old!r}")
        src = src.replace(old, new)
    ns = dict(vars(T))
    ns["_PEN"] = _PEN
    exec(compile(src, f"<patched {fn.__name__}>", "exec"), ns)
    return ns[fn.__name__]


def install_concave_penalty() -> None:
    """Replace ``trainer.sae_step`` (sparse path) and ``_dense_relu_step`` by versions whose L1 term
    is lambda * sum phi(f_i ||d_i||)."""
    dense = _patched(_ORIG["_dense_relu_step"], [
        ("    sq_sum = torch.zeros((), device=dev)\n",
         "    sq_sum = torch.zeros((), device=dev)\n    _pen = torch.zeros((), device=dev)\n"),
        ("        f_sum += colsum(f)\n",
         "        _u = f.float() * dec_norm\n        _g = _PEN['dphi'](_u)\n"
         "        f_sum += (f.float() * _g).sum(0)\n        _pen += _PEN['phi'](_u).sum()\n"),
        ("            G.add_(c_feat.to(G.dtype))\n", "            G.add_((c_feat * _g).to(G.dtype))\n"),
        ("        l1 = torch.dot(f_sum, dec_norm) / B\n", "        l1 = _pen / B\n"),
    ])
    T._dense_relu_step = dense
    step = _patched(_ORIG["sae_step"], [
        ("    base = c_feat.index_select(0, cols) if isinstance(c_feat, torch.Tensor) else torch.full_like(vals, c_feat)\n",
         "    _u = vals * dec_norm.index_select(0, cols)\n    _g = _PEN['dphi'](_u)\n"
         "    base = c_feat.index_select(0, cols) * _g\n"),
        ("        f_sum = torch.zeros(n, device=dev).index_add_(0, cols, vals)  # [n] sum over tokens of f\n",
         "        f_sum = torch.zeros(n, device=dev).index_add_(0, cols, vals * _g)\n"),
        ("        l1 = torch.dot(f_sum, dec_norm) / B\n", "        l1 = _PEN['phi'](_u).sum() / B\n"),
    ])
    step.__globals__["_dense_relu_step"] = dense
    T.sae_step = step


# ------------------------------------------------------------------------------------------------
# De-duplication step
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def dedup_step(m, source, step: int, cos_t: float, corr_t: float, seed: int) -> dict:
    sae = m.sae
    n = sae.n_features
    W = sae.W_dec
    norm = W.norm(dim=1).clamp_min(1e-12)
    U = W / norm[:, None]
    C = U @ U.t()
    C.fill_diagonal_(-2.0)
    ii, jj = torch.nonzero(torch.triu(C > cos_t, 1), as_tuple=True)
    rec = {"step": step, "pairs_cos": int(ii.numel()), "n_reinit": 0}
    if ii.numel() == 0:
        return rec
    X = T._sample_inputs(source, 8 * source.batch_size, step, W.device)  # [M, d] recent batches
    f = sae.encode(X)  # [M, n]
    fc = f - f.mean(0)
    sd = fc.norm(dim=0).clamp_min(1e-12)
    r = (fc[:, ii] * fc[:, jj]).sum(0) / (sd[ii] * sd[jj])  # [pairs] activation correlation
    keep = r > corr_t
    ii, jj = ii[keep], jj[keep]
    rec["pairs_cofiring"] = int(ii.numel())
    if ii.numel() == 0:
        return rec
    # union-find over the co-firing copy pairs; keep the most active member of each group
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in zip(ii.tolist(), jj.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    counts = (f > 0).sum(0)
    members = sorted(set(ii.tolist()) | set(jj.tolist()))
    groups: dict[int, list[int]] = {}
    for a in members:
        groups.setdefault(find(a), []).append(a)
    drop = []
    for g in groups.values():
        best = max(g, key=lambda a: (int(counts[a]), -a))
        drop += [a for a in g if a != best]
    dead = torch.tensor(sorted(drop), dtype=torch.long, device=W.device)
    err = (sae(X) - X).pow(2).sum(1).double()
    gen = torch.Generator().manual_seed(T._mix(seed, step, 77))
    pick = torch.multinomial(err.pow(2) / err.pow(2).sum(), dead.numel(), replacement=False, generator=gen)
    v = X.index_select(0, pick) - sae.b_dec
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    live = torch.ones(n, dtype=torch.bool)
    live[dead] = False
    dec_norm = W.norm(dim=1)[live].median()
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean()
    sae.W_dec[dead] = v * dec_norm
    sae.W_enc[:, dead] = (v * (0.2 * enc_norm)).t()
    sae.b_enc[dead] = 0
    m.reset_moments(dead)
    m.steps_since_fired[dead] = 0
    rec["n_reinit"] = int(dead.numel())
    return rec


@torch.no_grad()
def resample_dead(m, source, step: int, cfg, device) -> dict:
    """The paper's resampling of features dead over ``cfg.dead_window`` steps (``trainer._resample``),
    then the new decoder rows scaled from unit norm to the median live decoder norm (l1_decnorm's
    decoder is unconstrained, its rows sit near 0.3-0.5)."""
    window = min(cfg.resolved_dead_window, step)
    dead = (m.steps_since_fired >= window).nonzero().squeeze(1)
    live = torch.ones(m.sae.n_features, dtype=torch.bool, device=device)
    live[dead] = False
    med = m.sae.W_dec.norm(dim=1)[live].median() if live.any() else torch.tensor(1.0)
    rec = T._resample(m, source, step, cfg, device)
    if dead.numel():
        m.sae.W_dec[dead] *= med
    return rec


@torch.no_grad()
def merge_step(m, source, step: int, corr_t: float, min_count: int, seed: int, n_batches: int = 8) -> dict:
    """Merge co-firing features: on the last ``n_batches`` batches, groups of features whose
    activations correlate above ``corr_t`` (both firing on >= ``min_count`` tokens) become one.

    The member that fires most (r) is kept and takes the others' output: d_r <- d_r + sum_j c_j d_j,
    c_j = sum_t f_r f_j / sum_t f_r^2 (the least-squares ratio of j's activation to r's), so the
    reconstruction is unchanged where f_j = c_j f_r and the penalty falls (||d_r + c d_j|| <=
    ||d_r|| + c ||d_j||, and phi is subadditive). The others are re-initialised as in
    ``dedup_step``; Adam moments of every touched feature are reset.
    """
    import scipy.sparse as sp

    from splitkit.analyses.redundancy import activation_twins

    sae = m.sae
    n = sae.n_features
    X = T._sample_inputs(source, n_batches * source.batch_size, step, sae.W_dec.device)  # [M, d]
    f = sae.encode(X)  # [M, n]
    counts = (f > 0).sum(0)
    Fs = sp.csr_matrix(f.numpy())
    tw = activation_twins(Fs, k=4)
    ok = counts.numpy() >= min_count
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    n_pairs = 0
    for i in np.flatnonzero(ok):
        for j, v in zip(tw.index[i], tw.value[i]):
            if j >= 0 and v > corr_t and ok[j]:
                n_pairs += 1
                ri, rj = find(int(i)), find(int(j))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for a in np.flatnonzero(ok):
        groups.setdefault(find(int(a)), []).append(int(a))
    groups = {r: g for r, g in groups.items() if len(g) > 1}
    rec = {"step": step, "pairs": n_pairs, "groups": len(groups), "n_reinit": 0}
    if not groups:
        return rec
    drop, touched = [], []
    for g in groups.values():
        r = max(g, key=lambda a: (int(counts[a]), -a))
        fr = f[:, r]
        den = max(float((fr * fr).sum()), 1e-12)
        for j in g:
            if j == r:
                continue
            c = float((fr * f[:, j]).sum()) / den
            sae.W_dec[r] += c * sae.W_dec[j]
            drop.append(j)
        touched.append(r)
    dead = torch.tensor(sorted(drop), dtype=torch.long)
    err = (sae(X) - X).pow(2).sum(1).double()
    gen = torch.Generator().manual_seed(T._mix(seed, step, 78))
    pick = torch.multinomial(err.pow(2) / err.pow(2).sum(), dead.numel(), replacement=False, generator=gen)
    v = X.index_select(0, pick) - sae.b_dec
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    live = torch.ones(n, dtype=torch.bool)
    live[dead] = False
    dec_norm = sae.W_dec.norm(dim=1)[live].median()
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean()
    sae.W_dec[dead] = v * dec_norm
    sae.W_enc[:, dead] = (v * (0.2 * enc_norm)).t()
    sae.b_enc[dead] = 0
    m.reset_moments(torch.tensor(sorted(drop + touched), dtype=torch.long))
    m.steps_since_fired[dead] = 0
    rec["n_reinit"] = int(dead.numel())
    return rec


# ------------------------------------------------------------------------------------------------
# One run
# ------------------------------------------------------------------------------------------------
def dec_twin_share(W: torch.Tensor, t: float = 0.9) -> float:
    U = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    C = U @ U.t()
    C.fill_diagonal_(-2.0)
    return float((C.max(1).values > t).float().mean())


def train_one(cfg, seed: int, opts: dict, out_dir: Path) -> tuple[SparseAutoencoder, dict]:
    store = P.get_acts(cfg, seed)
    tcfg = P.trainer_config(cfg)
    source = StoreSource(store, tcfg.batch_size, seed=cfg.dict.seed)
    saes = P.new_family(cfg, store.d)
    tr = T.FamilyTrainer(saes, source, tcfg, out_dir=None, device=cfg.device)
    m = tr.members[0]
    sae = m.sae
    init = opts.get("init", "default")
    with torch.no_grad():
        if init == "enc_scale":
            sae.W_enc.copy_(sae.W_dec.t() * float(opts["enc_scale"]))
        elif init == "indep":
            gen = torch.Generator().manual_seed(T._mix(seed, 991))
            R_ = torch.randn(sae.W_enc.shape, generator=gen)
            sae.W_enc.copy_(R_ / R_.norm(dim=0, keepdim=True) * sae.W_dec.norm(dim=1)[None, :])
        elif init != "default":
            raise ValueError(f"unknown init {init!r}")
    W0 = sae.W_dec.detach().clone()
    dd = opts.get("dedup")
    every = int(dd["every"]) if dd else 0
    until = int(dd.get("until", 0.5) * tcfg.n_steps) if dd else 0
    curve, dedups = [], []
    t0 = time.perf_counter()
    probe_every = max(1, tcfg.n_steps // 20)
    rs = opts.get("resample")
    rs_steps = {int(round(f * tcfg.n_steps)) for f in rs["fracs"]} if rs else set()
    rs_cfg = dataclasses.replace(tcfg, dead_window=int(rs.get("window", 100))) if rs else None
    resamples = []
    mg = opts.get("merge")
    mg_from = int(mg.get("from", 0.2) * tcfg.n_steps) if mg else 0
    mg_until = int(mg.get("until", 0.8) * tcfg.n_steps) if mg else 0
    merges = []
    while tr.step < tcfg.n_steps:
        if every and tr.step and tr.step % every == 0 and tr.step <= until:
            dedups.append(dedup_step(m, source, tr.step, dd.get("cos", 0.9), dd.get("corr", 0.5), seed))
        if mg and tr.step and tr.step % int(mg["every"]) == 0 and mg_from <= tr.step <= mg_until:
            merges.append(merge_step(m, source, tr.step, mg.get("corr", 0.9), mg.get("min_count", 20), seed,
                                     mg.get("batches", 8)))
        if tr.step in rs_steps:
            resamples.append(resample_dead(m, source, tr.step, rs_cfg, tr.device))
        tr.train_step()
        if tr.step % probe_every == 0 or tr.step == tcfg.n_steps:
            curve.append([tr.step * tcfg.batch_size, round(dec_twin_share(sae.W_dec.detach()), 4),
                          round(m.log["l0"][-1], 2) if m.log["l0"] else None])
    train_s = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    sae.save(out_dir)
    # Do twins come from features that started close? initial cosine of final twin pairs
    U0 = W0 / W0.norm(dim=1, keepdim=True)
    return sae, {"train_s": round(train_s, 1), "tokens": tr.step * tcfg.batch_size, "dec_twin_curve": curve,
                 "dedups": dedups, "resamples": resamples, "merges": merges, "_U0": U0}


def measure(cfg, seed: int, sae: SparseAutoencoder, extra: dict) -> tuple[dict, object]:
    lm = P.get_lm(cfg, seed)
    data = P.get_tokens(cfg)
    train_store = P.get_acts(cfg, seed)
    ev = evaluate_sae(lm.model(cfg.device), sae, data.tokens("val"), cfg.lm.eval_tokens,
                      torch.from_numpy(train_store.mean_acts), device=cfg.device)
    ana = P.get_acts(cfg, seed, "analysis")
    mm = T.resolve_matmul_dtype(cfg.dict.matmul_dtype, torch.device(cfg.device))
    F1 = encode_sparse(sae, ana.head(TWIN_TOKENS), matmul_dtype=mm)
    W = sae.W_dec.detach().numpy()
    red = R.redundancy_summary(F1, W, threshold=0.9, k=8)
    tw = R.activation_twins(F1, k=2)
    # initial decoder cosine of the final twin pairs (above 0.9) against all pairs' typical value
    U0 = extra.pop("_U0")
    init_cos = rand_cos = np.zeros(0)
    if U0 is not None:
        U0 = U0.numpy()
        sel = np.flatnonzero(np.nan_to_num(tw.twin_value, nan=-1) > 0.9)
        init_cos = (U0[sel] * U0[tw.twin[sel]]).sum(1) if sel.size else np.zeros(0)
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, W.shape[0], 4000), rng.integers(0, W.shape[0], 4000)
        rand_cos = (U0[a] * U0[b]).sum(1)[a != b]
    counts = np.asarray(F1.getnnz(axis=0))
    u = None
    if F1.nnz:
        nrm = np.linalg.norm(W, axis=1)
        u = float(np.median(F1.data * nrm[F1.indices]))
    out = {
        "seed": seed, "l0": round(ev["l0"], 2), "loss_recovered_zero": round(ev["loss_recovered_zero"], 4),
        "loss_recovered_mean": round(ev["loss_recovered_mean"], 4), "fvu": round(ev["fvu"], 4),
        "dead_frac_1M": round(float((counts == 0).mean()), 4),
        "ultralow_frac_1M": round(float(((counts > 0) & (counts < 1e-5 * F1.shape[0])).mean()), 4),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in red.items()},
        "median_contribution_norm": u,
        "twin_init_cos_median": round(float(np.median(init_cos)), 4) if init_cos.size else None,
        "random_init_cos_abs_median": round(float(np.median(np.abs(rand_cos))), 4) if rand_cos.size else None,
        **extra,
    }
    return out, F1


def universality(cfg, saes: dict, n_tokens: int | None = None) -> dict:
    """Matching views of A against B on the first ``n_tokens`` analysis tokens (None: the
    preset's), plus neurons."""
    mm = T.resolve_matmul_dtype(cfg.dict.matmul_dtype, torch.device(cfg.device))
    F, stores = {}, {}
    for s, sae in saes.items():
        stores[s] = P.get_acts(cfg, s, "analysis")
        F[s] = encode_sparse(sae, stores[s].head(n_tokens), matmul_dtype=mm)
    a, b = cfg.seed_a, cfg.seed_b
    n_tok = F[a].shape[0]
    counted = counted_mask(np.asarray(F[a].getnnz(axis=0)), n_tok, cfg.analysis.min_count,
                           cfg.analysis.ultralow_density)
    reps = {}
    for s in (a, b):
        tw = R.activation_twins(F[s], k=8)
        reps[s] = R.twin_clusters(tw, 0.9, F[s].getnnz(axis=0)).representative
    v = R.matching_views(F[a], F[b], reps_a=reps[a], reps_b=reps[b], mask_a=counted, k=cfg.analysis.top_k)
    NA, NB = stores[a].head(n_tokens), stores[b].head(n_tokens)
    nv = R.matching_views(NA, NB, k=cfg.analysis.top_k)
    out = {"n_analysis_tokens": n_tok, "features": {k: (round(x, 4) if isinstance(x, float) else x)
                                                    for k, x in v.items()},
           "neurons": {k: (round(x, 4) if isinstance(x, float) else x) for k, x in nv.items()}}
    out["margin_many_to_one"] = round(v["many_to_one_median"] - nv["many_to_one_median"], 4)
    out["margin_one_to_one"] = round(v["one_to_one_median"] - nv["one_to_one_median"], 4)
    out["margin_dedup_many_to_one"] = round(v["dedup_many_to_one_median"] - nv["many_to_one_median"], 4)
    return out


def table(path: Path = OUT / "probe.jsonl") -> str:
    """The probe rows as a markdown table (one line per variant and seed; universality rows apart)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    head = ("| variant | seed | L0 | loss rec. (zero) | dead (1M) | act twins > 0.9 | median twin corr | "
            "dec twins > 0.9 | clusters (act) | train s |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "universality" in r:
            continue
        out.append(f"| {r['name']} | {r['seed']} | {r['l0']:.1f} | {100 * r['loss_recovered_zero']:.1f}% | "
                   f"{100 * r['dead_frac_1M']:.1f}% | {100 * r['twin_share_act_0.9']:.1f}% | "
                   f"{r['twin_median_act_corr']:.3f} | {100 * r['twin_share_dec_0.9']:.1f}% | "
                   f"{r['n_clusters_act_0.9']} | {r.get('train_s')} |")
    for r in rows:
        if "universality" in r:
            u = r["universality"]
            f, nn = u["features"], u["neurons"]
            out.append(f"\n{r['name']}: many-to-one {f['many_to_one_median']:.3f} vs neurons "
                       f"{nn['many_to_one_median']:.3f}; one-to-one {f['one_to_one_median']:.3f} vs "
                       f"{nn['one_to_one_median']:.3f}; de-duplicated {f['dedup_many_to_one_median']:.3f} / "
                       f"{f['dedup_one_to_one_median']:.3f} ({f['dedup_n']} of {f['n']}); mutual "
                       f"{f['mutual_share']:.2f} vs {nn['mutual_share']:.2f}")
    return "\n".join(out)


def main() -> None:
    if sys.argv[1:2] == ["table"]:
        print(table())
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("opts", nargs="?", default="{}")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--universality", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="load results/copies/NAME/seed*/ instead of training")
    ap.add_argument("--pipeline", action="store_true",
                    help="measure the pipeline's cached (or newly built) family of this config instead of training")
    ap.add_argument("--only-universality", action="store_true",
                    help="load the dictionaries of earlier calls (or the pipeline's) and run the matching views only")
    ap.add_argument("--analysis-tokens", type=int, default=None,
                    help="tokens of the matching views (default: the preset's analysis.n_tokens)")
    ap.add_argument("--preset", default="default", help="config preset (smoke: a quick check of this script)")
    ap.add_argument("--cache-dir", default=None, help="cache folder (default: the preset's)")
    args = ap.parse_args()
    opts = json.loads(args.opts)
    dict_over = {k: opts[k] for k in ("l1_coeff", "lr", "n_tokens", "l1_warmup_tokens", "lr_decay_frac")
                 if k in opts}
    cfg = get_preset(args.preset)
    if args.cache_dir:
        cfg = cfg.replace(cache_dir=args.cache_dir)
    if dict_over:
        cfg = cfg.with_overrides(dict=dict_over)
    pen = opts.get("penalty", "l1")
    if pen != "l1":
        set_penalty(pen, s=opts.get("s", 1.0), p=opts.get("p", 0.5), eps=opts.get("eps", 0.1))
        install_concave_penalty()
    OUT.mkdir(parents=True, exist_ok=True)
    saes = {}
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.only_universality:  # dictionaries trained by earlier calls
        for seed in seeds:
            saes[seed] = (P.get_family(cfg, seed).sae(cfg.dict.sizes[0]) if args.pipeline
                          else SparseAutoencoder.load(OUT / args.name / f"seed{seed}"))
        seeds = []
    for seed in seeds:
        folder = OUT / args.name / f"seed{seed}"
        if args.pipeline:
            fam = P.get_family(cfg, seed)
            sae = fam.sae(cfg.dict.sizes[0])
            u0 = SparseAutoencoder(P.new_family(cfg, sae.d_in)[0].cfg).W_dec.detach()
            extra = {"_U0": u0 / u0.norm(dim=1, keepdim=True), "train_s": fam.train_summary.get("elapsed_s")}
        elif args.reuse:
            sae = SparseAutoencoder.load(folder)
            extra = {"_U0": None}
        else:
            sae, extra = train_one(cfg, seed, opts, folder)
        row, _ = measure(cfg, seed, sae, extra)
        row = {"name": args.name, "opts": opts, **row}
        print(json.dumps(row), flush=True)
        with open(OUT / "probe.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        saes[seed] = sae
    if args.universality or args.only_universality:
        for seed in (cfg.seed_a, cfg.seed_b):  # a seed trained by an earlier call
            if seed not in saes:
                saes[seed] = SparseAutoencoder.load(OUT / args.name / f"seed{seed}")
        u = {"name": args.name, "opts": opts, "universality": universality(cfg, saes, args.analysis_tokens)}
        print(json.dumps(u), flush=True)
        with open(OUT / "probe.jsonl", "a") as fh:
            fh.write(json.dumps(u) + "\n")


if __name__ == "__main__":
    main()
