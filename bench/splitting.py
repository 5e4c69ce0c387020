"""Self-timing benchmark of the splitting study's stages for one run on the real pipeline.

    python bench/splitting.py --sizes 512..4096                     # the default family (seed 0)
    python bench/splitting.py --sizes 512..16384 --analysis-tokens 1M --sae-tokens 2M

Stages (wall and process CPU seconds, peak RSS): family training (one trainer pass over every size;
when the family is already cached, the wall time its own ``train_summary.json`` recorded, marked
``"recorded": true``), feature activations of every size over the analysis tokens (the encoder run
afresh, not read from the cache), links between the two largest sizes (masked cosine, top-k parents,
children cover), and the joint UMAP (2-D + 10-D + HDBSCAN) of every size's decoder directions.
Writes docs/bench/splitting.json (or --out) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


class Stage:
    def __init__(self, out: dict, name: str):
        self.out, self.name = out, name

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.out[self.name] = {"wall_s": round(time.perf_counter() - self.t, 2),
                               "cpu_s": round(time.process_time() - self.c, 2), "peak_rss_gb": round(_rss_gb(), 3)}


def main(argv=None) -> int:
    from splitkit import pipeline as P
    from splitkit.analyses import maps
    from splitkit.analyses import splitting as S
    from splitkit.analyses.splitting_run import study_config
    from splitkit.config import get_preset, get_splitting_preset, parse_sizes, parse_token_count
    from splitkit.features import feature_acts
    from splitkit.precision import matmul_dtype

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="512..4096")
    p.add_argument("--analysis-tokens", default="1M")
    p.add_argument("--sae-tokens", default=None, help="SAE training tokens (default: the default preset's, 2M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default=None)
    p.add_argument("--skip-umap", action="store_true")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "bench" / "splitting.json"))
    a = p.parse_args(argv)
    sizes = parse_sizes(a.sizes)
    scfg = get_splitting_preset("default").replace(sizes=sizes,
                                                    analysis_tokens=parse_token_count(a.analysis_tokens, "--analysis-tokens"))
    cfg = get_preset("default").with_overrides(device=a.device)
    if a.cache:
        cfg = cfg.replace(cache_dir=a.cache)
    if a.sae_tokens:
        cfg = cfg.with_overrides(dict={"n_tokens": parse_token_count(a.sae_tokens, "--sae-tokens")})
    fcfg = study_config(cfg, scfg)
    from splitkit.provenance import command_line, git_revision

    res = {"git_revision": git_revision(), "command": command_line(),
           "sizes": list(sizes), "n_features": int(sum(sizes)), "sae_tokens": fcfg.dict.n_tokens,
           "analysis_tokens": scfg.analysis_tokens, "recipe": fcfg.dict.recipe, "device": a.device,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()},
           "stages": {}}
    st = res["stages"]
    cached = P.family_build(fcfg, a.seed, progress=False).ready
    with Stage(st, "family_training"):
        fam = P.get_family(fcfg, a.seed, progress=False)
    if cached:
        st["family_training"] = {"wall_s": round(fam.train_summary.get("elapsed_total_s", float("nan")), 2),
                                 "recorded": True, "note": "family was cached; wall time from its train_summary.json"}
    store = P.get_acts(fcfg, a.seed, "analysis", progress=False)
    mm = matmul_dtype(fcfg.dict.matmul_dtype, a.device)
    acts, W = {}, {}
    with Stage(st, "feature_activations"):
        for n in sizes:
            sae = fam.sae(n, device=a.device)
            acts[n] = feature_acts(sae, store, device=a.device, progress=False, matmul_dtype=mm)
            W[n] = sae.W_dec.detach().cpu().numpy()
    res["l0_per_size"] = {str(n): float(acts[n].nnz / acts[n].shape[0]) for n in sizes}
    res["dead_share_per_size"] = {str(n): float((acts[n].getnnz(axis=0) == 0).mean()) for n in sizes}
    res["trainer_dead_in_last_window"] = {str(n): int(s.get("dead", -1)) for n, s in
                                          ((int(k.split("_")[1]), v) for k, v in fam.train_summary["saes"].items())}
    lo, hi = sizes[-2], sizes[-1]
    with Stage(st, f"links_{lo}_{hi}"):
        df = S.links(acts[lo], acts[hi], W[lo], W[hi], k=scfg.k, min_cofire=scfg.min_cofire)
        sel = df["masked_cos"] >= scfg.threshold
        S.children_cover(acts[lo], acts[hi], df.loc[sel, "parent"].to_numpy(), df.loc[sel, "child"].to_numpy())
    res["links"] = {"n_candidates": int(len(df)), "share_children_linked":
                    float(df.loc[sel & (df["rank"] == 0)].shape[0] / hi)}
    if not a.skip_umap:
        with Stage(st, "umap_joint_one_run"):
            m = maps.joint_map({("A", n): W[n] for n in sizes}, n_neighbors=scfg.umap_neighbors,
                               cluster_dims=scfg.cluster_dims, min_cluster_size=scfg.min_cluster_size, seed=0)
        res["umap_points"] = int(len(m))
    res["peak_rss_gb"] = round(_rss_gb(), 3)
    res["machine"]["load_avg_end"] = os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(out.read_text()) if out.is_file() else {}
    prev[a.sizes + f"@{a.analysis_tokens}"] = res
    out.write_text(json.dumps(prev, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
