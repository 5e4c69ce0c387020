"""Control for the streamed analysis sets: universality on the held-out package text alone.

The 16M-token analysis set is the stdlib's analysis split (4.1M tokens) followed by package sources.
This streams the first N tokens of the package sources only, for chosen dictionaries of the scaling
grid, so a change between 4M and 16M analysis tokens can be split into "more tokens" and "other text".

    PYTHONPATH=. python scripts/probe_extra_text.py l1_decnorm 4000000 1024:500000 2048:500000 1024:8000000
"""

import json
import sys

import numpy as np
import torch

from splitkit import pipeline as P
from splitkit.analysis_stream import stream_universality
from splitkit.config import get_preset
from splitkit.analyses.scaling import STREAM_CHUNK_TOKENS, budget_steps, recipe_config
from splitkit.analyses.universality import summarize_units
from splitkit.config import ScalingConfig
from splitkit.precision import matmul_dtype


def main(recipe: str, n_tokens: int, specs: list[str]) -> None:
    cfg = get_preset("default")
    sc = ScalingConfig()
    cfg_r = recipe_config(cfg, sc, recipe, 4_000_000)
    fams = {s: P.get_family(cfg_r, s, False) for s in (cfg.seed_a, cfg.seed_b)}
    steps = dict(budget_steps(cfg_r, sc))
    pairs = {}
    for spec in specs:
        n, b = (int(v) for v in spec.split(":"))
        pairs[spec] = tuple(fams[s].sae(n, steps[b]) for s in (cfg.seed_a, cfg.seed_b))
    T = cfg.model.n_ctx
    extra = np.asarray(P.get_extra_tokens(cfg, False)[: (n_tokens // T) * T])
    mm = matmul_dtype(cfg_r.dict.matmul_dtype, torch.device(cfg.device))
    res, timing = stream_universality(P.get_lm(cfg, cfg.seed_a).model(), P.get_lm(cfg, cfg.seed_b).model(), extra,
                                      pairs, chunk_tokens=STREAM_CHUNK_TOKENS, shuffle_seed=cfg.analysis.shuffle_seed,
                                      matmul_dtype=mm, progress=False)
    out = {"recipe": recipe, "package_tokens": len(extra), "timing": timing, "points": {}}
    for name, r in res.items():
        fig = summarize_units(r.corr, r.chance, r.counts, r.n_tokens,
                              0.0 if name == "neurons" else cfg.analysis.ultralow_density)
        out["points"][name] = {"paper_median": fig["paper"]["median"], "all_alive_median": fig["all_alive"]["median"],
                               "n_counted": fig["paper"]["n"], "chance_median": fig["chance_paper_median"],
                               "l0": r.l0}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
