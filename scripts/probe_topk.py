"""Probe: one TopK dictionary on the default preset's activations of LM seed 0, trained and measured.

    PYTHONPATH=. nice -n 10 python scripts/probe_topk.py 16 /tmp/topk_k16            # k, work folder (resumable)
    PYTHONPATH=. nice -n 10 python scripts/probe_topk.py 32 /tmp/topk_k32 '{"n_tokens": 2000000}'

(``PYTHONPATH=.``: a script's own folder, not the checkout, heads ``sys.path``; without it an installed
splitkit from another checkout is the one imported.)

Trains ``--recipe topk`` at 4,096 latents on the preset's training store (the trainer config the
pipeline would use, ``pipeline.trainer_config``; JSON overrides of DictConfig fields as the third
argument), outside the shared cache, then prints one JSON line: L0, FVU and loss recovered on the
validation split (``metrics.evaluate_sae``), the dead share (no firing on the first 1M analysis
tokens), the trainer's own dead count (no firing in its last dead window), and the in-dictionary
twin shares (``analyses.redundancy.redundancy_summary``, threshold 0.9). The figures in
docs/recipes.md's topk rows come from this script.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from splitkit import pipeline as P
from splitkit.activations import StoreSource
from splitkit.analyses import redundancy as R
from splitkit.config import get_preset
from splitkit.features import encode_sparse
from splitkit.metrics import evaluate_sae
from splitkit.precision import matmul_dtype
from splitkit.sae import SparseAutoencoder
from splitkit.train import FamilyTrainer, run_trainer

N_ANALYSIS = 1_000_000
k, work = int(sys.argv[1]), Path(sys.argv[2])
over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
cfg = get_preset("default").with_overrides(dict={"recipe": "topk", "k": k, "sizes": (4096,), **over})
seed = cfg.seed_a
tcfg = P.trainer_config(cfg)
store = P.get_acts(cfg, seed)
final = work / "final" / "sae_4096"
t0 = time.perf_counter()
if not (final / "cfg.json").is_file():
    trainer = FamilyTrainer(P.new_family(cfg, store.d), StoreSource(store, tcfg.batch_size, seed=cfg.dict.seed), tcfg,
                            out_dir=work, device=cfg.device)
    res = trainer.finish(run_trainer(trainer, progress=True, desc=f"topk k={k}"))
else:
    res = json.loads((work / "train_log.json").read_text())
train_s = time.perf_counter() - t0
sae = SparseAutoencoder.load(final)
data = P.get_tokens(cfg)
ev = evaluate_sae(P.get_lm(cfg, seed).model(cfg.device), sae, data.tokens("val"), cfg.lm.eval_tokens,
                  torch.from_numpy(store.mean_acts), device=cfg.device)
F = encode_sparse(sae, P.get_acts(cfg, seed, "analysis").head(N_ANALYSIS),
                  matmul_dtype=matmul_dtype(cfg.dict.matmul_dtype, cfg.device))
counts = np.asarray(F.getnnz(axis=0))
red = R.redundancy_summary(F, sae.W_dec.detach().numpy(), threshold=0.9, k=8)
red["twin_k"] = red.pop("k", 8)  # its neighbour count, not TopK's k (it used to overwrite "k" below)
rec = res["saes"]["sae_4096"]
print(json.dumps({"k": k, "sae_tokens": tcfg.n_steps * tcfg.batch_size, "lr": tcfg.lr,
                  "dead_window_tokens": tcfg.resolved_dead_window * tcfg.batch_size,
                  "l0": ev["l0"], "fvu": ev["fvu"], "loss_recovered_zero": ev["loss_recovered_zero"],
                  "loss_recovered_mean": ev["loss_recovered_mean"], "dead_frac_1M": float((counts == 0).mean()),
                  "ultralow_frac_1M": float(((counts > 0) & (counts < 1e-5 * F.shape[0])).mean()),
                  "dead_last_window": rec["dead"], "train_s": round(train_s, 1), **red}, default=float), flush=True)
