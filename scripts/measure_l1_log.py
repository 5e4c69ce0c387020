"""Measure trained l1_log dictionaries (issue 20 item 2): L0, loss recovered, dead share, in-dictionary
twins on the first 1M analysis tokens, and (with both seeds) the matching views against neurons.

Usage: PYTHONPATH=. python scripts/measure_l1_log.py 0=PATH_TO_SAE_DIR [1=PATH_TO_SAE_DIR]  (one JSON line per result)
"""
import json, sys
import numpy as np, torch
from splitkit import pipeline as P
from splitkit.config import get_preset
from splitkit.analyses import redundancy as R
from splitkit.analyses.universality import counted_mask
from splitkit.features import encode_sparse
from splitkit.metrics import evaluate_sae
from splitkit.precision import matmul_dtype
from splitkit.sae import SparseAutoencoder

cfg = get_preset("default").with_overrides(dict={"recipe": "l1_log", "l1_coeff": 1e-3})
N = 1_000_000
paths = dict(a.split("=") for a in sys.argv[1:])  # seed=path of sae dir
mm = matmul_dtype(cfg.dict.matmul_dtype, cfg.device)
data = P.get_tokens(cfg)
F, stores, out = {}, {}, {}
for s, path in paths.items():
    s = int(s)
    sae = SparseAutoencoder.load(path)
    lm = P.get_lm(cfg, s)
    ev = evaluate_sae(lm.model(cfg.device), sae, data.tokens("val"), cfg.lm.eval_tokens,
                      torch.from_numpy(P.get_acts(cfg, s).mean_acts), device=cfg.device)
    stores[s] = P.get_acts(cfg, s, "analysis")
    F[s] = encode_sparse(sae, stores[s].head(N), matmul_dtype=mm)
    counts = np.asarray(F[s].getnnz(axis=0))
    red = R.redundancy_summary(F[s], sae.W_dec.detach().numpy(), threshold=0.9, k=8)
    out[s] = {"l0": ev["l0"], "loss_recovered_zero": ev["loss_recovered_zero"], "loss_recovered_mean": ev["loss_recovered_mean"],
              "fvu": ev["fvu"], "dead_frac_1M": float((counts == 0).mean()),
              "ultralow_frac_1M": float(((counts > 0) & (counts < 1e-5 * F[s].shape[0])).mean()), **red}
    print(json.dumps({s: out[s]}), flush=True)
if len(F) == 2:
    a, b = sorted(F)
    n_tok = F[a].shape[0]
    counted = counted_mask(np.asarray(F[a].getnnz(axis=0)), n_tok, cfg.analysis.ultralow_density, cfg.analysis.min_count)
    reps = {s: R.twin_clusters(R.activation_twins(F[s], k=8), 0.9, F[s].getnnz(axis=0)).representative for s in (a, b)}
    v = R.matching_views(F[a], F[b], reps_a=reps[a], reps_b=reps[b], mask_a=counted, k=cfg.analysis.top_k)
    nv = R.matching_views(stores[a].head(N), stores[b].head(N), k=cfg.analysis.top_k)
    print(json.dumps({"features": v, "neurons": nv}, default=float), flush=True)
