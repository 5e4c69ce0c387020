"""Exploratory probe: universality of one recipe at snapshots of one run, features vs neurons.

    python scripts/probe_recipe.py l1_decnorm '{"n_tokens": 2000000, "snaps": [500000, 1000000], "l1_coeff": 1.2e-3}'
    python scripts/probe_recipe.py topk '{"n_tokens": 2000000, "snaps": [500000, 1000000], "k": 16}' --analysis-tokens 2000000

Prints one JSON line per snapshot (median max activation correlation over alive / density >= 1e-5 /
>= 100 firings, and the dictionary's metrics). The figures quoted in docs/recipes.md and
docs/results.md as "probes" came from this script; the universality-scaling study is the
systematic version of it.
"""
import argparse
import json

import numpy as np

from splitkit import correlation
from splitkit import pipeline as P
from splitkit.config import get_preset

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("recipe", choices=["paper", "l1_decnorm", "topk"])
ap.add_argument("overrides", nargs="?", default="{}",
                help='JSON: dict-config fields plus "snaps" (token counts), "size" and "n_tokens"')
ap.add_argument("--analysis-tokens", type=int, default=None, help="analysis tokens (default: the preset's)")
args = ap.parse_args()
extra = json.loads(args.overrides)
snaps = tuple(extra.pop("snaps", ()))
sizes = tuple(extra.pop("sizes", [extra.pop("size", 4096)]))
cfg = get_preset("default")
over = {"dict": {"sizes": sizes, "recipe": args.recipe, "snapshot_tokens": snaps, **extra}}
if args.analysis_tokens:
    over["analysis"] = {"n_tokens": args.analysis_tokens}
cfg = cfg.with_overrides(**over)
tc = P.trainer_config(cfg)
na, nb = P.get_acts(cfg, cfg.seed_a, "analysis"), P.get_acts(cfg, cfg.seed_b, "analysis")
neur = correlation.max_correlation(na.head(), nb.head(), k=1, dtype=np.float32).value[:, 0]
print(json.dumps({"neurons_median": round(float(np.nanmedian(neur)), 3), "neurons_alive": int(np.isfinite(neur).sum())}),
      flush=True)
for st, size in [(st, n) for st in list(tc.snapshot_steps) + [None] for n in sizes]:
    fa, fb = P.get_features(cfg, cfg.seed_a, size, st), P.get_features(cfg, cfg.seed_b, size, st)
    FA, FB = fa.acts(), fb.acts()
    c = correlation.max_correlation(FA, FB, k=1).value[:, 0]
    cnt = np.asarray(FA.getnnz(axis=0))
    out = {"size": size, "step": st, "tokens": (st or tc.n_steps) * tc.batch_size}
    for name, m in (("alive", cnt > 0), ("dens>=1e-5", cnt / FA.shape[0] >= 1e-5), ("cnt>=100", cnt >= 100)):
        out[name] = [int(m.sum()), round(float(np.nanmedian(c[m])), 3)]
    for k in ("fvu", "l0", "loss_recovered_zero", "loss_recovered_mean", "dead_frac", "ultralow_frac"):
        out[k] = round(fa.stats[k], 3)
    out["loss_recovered_zero_b"] = round(fb.stats["loss_recovered_zero"], 3)
    print(json.dumps(out), flush=True)
