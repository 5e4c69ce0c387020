"""LM training throughput on this machine: tokens/s of one fp32 training step of the default model.

    python bench/lm_train.py [--steps 12] [--batch 32,64,128]

Prints a table and writes docs/bench/lm_train.json. (No peer: the paper's LMs have no public code.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from splitkit import pipeline as P
from splitkit.config import get_preset
from splitkit.lm import lm_batch, make_optimizer
from splitkit.model import Transformer
from splitkit.provenance import provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", default="32,64,128")
    args = ap.parse_args()
    cfg = get_preset("default")
    data = P.get_tokens(cfg)
    toks = np.asarray(data.tokens("train"))
    rows = []
    for bs in (int(b) for b in args.batch.split(",")):
        torch.manual_seed(0)
        model = Transformer(cfg.model, data.info["vocab_size"])
        opt = make_optimizer(model, cfg.lm)
        times = []
        for step in range(args.steps):
            x, y = lm_batch(toks, 0, step, bs, cfg.model.n_ctx)
            t = time.perf_counter()
            loss = model.loss(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        med = float(np.median(times[3:]))
        rows.append({"batch_seqs": bs, "tokens_per_step": bs * cfg.model.n_ctx, "step_s": med,
                     "tokens_per_s": bs * cfg.model.n_ctx / med})
        print(f"batch {bs:4d} x {cfg.model.n_ctx}: {rows[-1]['tokens_per_s']:,.0f} tok/s", flush=True)
    out = {"rows": rows, "loadavg": os.getloadavg(), **provenance()}
    path = Path(__file__).resolve().parents[1] / "docs" / "bench" / "lm_train.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
