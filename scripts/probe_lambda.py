"""Exploratory probe: L0 and loss recovered of l1_decnorm dictionaries on LM A for several lambdas.

    python scripts/probe_lambda.py 4000000 2.2e-3 1.6e-3       # SAE tokens, then lambdas

Trains in memory (nothing cached) on the default preset's activation store of run A; prints one JSON
line per lambda (loss recovered on 131k validation tokens). Source of the lambda table in
docs/recipes.md.
"""
import json
import sys
import time

import torch

from splitkit import pipeline as P
from splitkit.activations import StoreSource
from splitkit.config import get_preset
from splitkit.metrics import evaluate_sae
from splitkit.sae import SAEConfig, SparseAutoencoder
from splitkit.train import TrainerConfig, train_family

if len(sys.argv) < 3:
    raise SystemExit("usage: python scripts/probe_lambda.py N_TOKENS LAMBDA [LAMBDA ...]")
cfg = get_preset("default")
store, lm, data = P.get_acts(cfg, cfg.seed_a), P.get_lm(cfg, cfg.seed_a), P.get_tokens(cfg)
model = lm.model()
n_tok, sizes = int(float(sys.argv[1])), [4096]
for lam in (float(v) for v in sys.argv[2:]):
    saes = [SparseAutoencoder(SAEConfig(d_in=store.d, n_features=n, seed=0)) for n in sizes]
    tc = TrainerConfig(recipe="l1_decnorm", l1_coeff=lam, n_steps=n_tok // 4096, batch_size=4096, lr=1e-3)
    t = time.time()
    train_family(saes, StoreSource(store, 4096, seed=0), tc, progress=False)
    out = {"lambda": lam, "train_s": round(time.time() - t)}
    for n, s in zip(sizes, saes):
        ev = evaluate_sae(model, s, data.tokens("val"), 131072, torch.from_numpy(store.mean_acts))
        out[n] = {k: round(ev[k], 3) for k in ("l0", "fvu", "loss_recovered_zero", "loss_recovered_mean")}
    print(json.dumps(out), flush=True)
