"""The default preset's dictionaries (studies.universality) measured on a streamed analysis set.

studies.universality correlates over the stdlib's analysis split (4M tokens, stored); this streams
the first N tokens of the analysis stream (the split, then held-out package sources) through the
same dictionaries, to show whether the default's figure holds on a larger set.

    PYTHONPATH=. python scripts/probe_default_stream.py 16000000
"""

import json
import sys

import torch

from splitkit import pipeline as P
from splitkit.analysis_stream import stream_universality
from splitkit.config import get_preset
from splitkit.analyses.scaling import STREAM_CHUNK_TOKENS
from splitkit.analyses.universality import summarize_units
from splitkit.precision import matmul_dtype


def main(n_tokens: int) -> None:
    cfg = get_preset("default")
    n = cfg.dict.sizes[-1]
    fams = {s: P.get_family(cfg, s, False) for s in (cfg.seed_a, cfg.seed_b)}
    tokens = P.analysis_tokens(cfg, n_tokens, False)
    mm = matmul_dtype(cfg.dict.matmul_dtype, torch.device(cfg.device))
    res, timing = stream_universality(P.get_lm(cfg, cfg.seed_a).model(), P.get_lm(cfg, cfg.seed_b).model(), tokens,
                                      {f"default-n{n}": (fams[cfg.seed_a].sae(n), fams[cfg.seed_b].sae(n))},
                                      chunk_tokens=STREAM_CHUNK_TOKENS, shuffle_seed=cfg.analysis.shuffle_seed,
                                      matmul_dtype=mm, progress=False)
    out = {"analysis_tokens": len(tokens), "family_keys": {s: f.key for s, f in fams.items()}, "timing": timing,
           "points": {}}
    for name, r in res.items():
        fig = summarize_units(r.corr, r.chance, r.counts, r.n_tokens,
                              0.0 if name == "neurons" else cfg.analysis.ultralow_density)
        out["points"][name] = {"paper_median": fig["paper"]["median"], "all_alive_median": fig["all_alive"]["median"],
                               "n_counted": fig["paper"]["n"], "n_ultralow": fig["n_ultralow"], "n_dead": fig["n_dead"],
                               "chance_median": fig["chance_paper_median"], "l0": r.l0}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]))
