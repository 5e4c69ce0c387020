"""Feature-splitting study: one family of dictionary sizes per run, the splitting forest, fates, a
joint UMAP, the universality of the splits, and Gephi files.

    python -m studies.splitting                          # default family 512..4096 on the stdlib LMs
    python -m studies.splitting --sizes 512..16384x2     # a doubling range (also '512,2048,8192')
    python -m studies.splitting --preset smoke           # the same path in seconds
    python -m studies.splitting --compare-recipe topk    # a second recipe, side by side in report.md

Writes summary.json, nodes/edges tables, figures, GEXF/GraphML files and report.md under --out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from studies._common import add_memory_check_arg, add_dict_args, base_parser, config_from_args, dict_overrides, friendly_errors


def parse_runs(text: str) -> tuple[str, ...]:
    """``A``, ``B`` or ``A,B`` -> a tuple of run names; anything else is a one-line error."""
    from splitkit.config import ConfigError

    parts = [p.strip().upper() for p in text.split(",")]
    if not parts or any(p not in ("A", "B") for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(f"--runs: give A, B or A,B (each once), got {text!r}")
    return tuple(sorted(parts))


def main(argv=None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None,
                   help="dictionary sizes: '512..4096' (doubling), '512..131072x4' (a step) or '512,2048,8192' "
                        "(default: the preset's, 512..4096 at the default preset)")
    p.add_argument("--runs", default="A,B", help="runs to build: A, B or A,B (universality of splits needs both)")
    p.add_argument("--threshold", type=float, default=None, help="masked-cosine link threshold (default 0.4)")
    p.add_argument("--analysis-tokens", default=None,
                   help="analysis tokens of the feature activations, e.g. '1M' (default: the preset's)")
    p.add_argument("--compare-recipe", default=None,
                   help="also run the study with this recipe and put the two side by side in report.md "
                        "(its own files go to <out>/compare_<recipe>/)")
    add_dict_args(p)
    add_memory_check_arg(p)
    p.add_argument("--out", default="results/splitting", help="output folder")
    args = p.parse_args(argv)
    with friendly_errors():
        from splitkit.config import ConfigError, get_splitting_preset, parse_sizes, parse_token_count
        from splitkit.train.recipes import recipe_names

        scfg = get_splitting_preset(args.preset)
        sover = {}
        if args.sizes is not None:
            sizes = parse_sizes(args.sizes)
            if len(sizes) < 2:
                raise ConfigError(f"--sizes: splitting needs two or more sizes, got {args.sizes!r}; e.g. 512..4096")
            sover["sizes"] = sizes
        if args.threshold is not None:
            if not 0 < args.threshold <= 1:
                raise ConfigError(f"--threshold must be in (0, 1], got {args.threshold}")
            sover["threshold"] = args.threshold
        if args.analysis_tokens is not None:
            sover["analysis_tokens"] = parse_token_count(args.analysis_tokens, "--analysis-tokens")
        scfg = scfg.replace(**sover)
        runs = parse_runs(args.runs)
        if args.compare_recipe is not None and args.compare_recipe not in recipe_names():
            raise ConfigError(f"--compare-recipe must be one of {', '.join(recipe_names())}, got {args.compare_recipe!r}")
        cfg = config_from_args(args)
        d = dict_overrides(args)
        if d:
            cfg = cfg.with_overrides(dict=d)
        from splitkit import budget
        from splitkit.analyses.splitting_run import run_splitting, study_config
        from splitkit.report.splitting import write_splitting

        recipes = [cfg.dict.recipe] + ([args.compare_recipe] if args.compare_recipe not in (None, cfg.dict.recipe)
                                       else [])
        est = budget.splitting_estimate(cfg, scfg, len(runs), len(recipes))
        budget.announce(est, cfg.device, args.no_memory_check)
        from splitkit.pipeline import fit_lm_budget
        from splitkit.progress import stage

        cfg = fit_lm_budget(cfg, progress=not args.quiet)  # the universality study's rule, so the same LMs
        out = Path(args.out)
        summaries, first = {}, None
        for i, recipe in enumerate(recipes):
            rcfg = cfg.with_overrides(dict={"recipe": recipe})
            t0 = time.perf_counter()
            res = run_splitting(rcfg, scfg, runs, progress=not args.quiet)
            extra = {"wall_s": time.perf_counter() - t0, "estimate": est.to_dict()}
            if i == 0:
                first = (res, rcfg, extra)
            # summary.json records the config the pipeline ran with (the family's sizes, the analysis tokens)
            dest = out if i == 0 else out / f"compare_{recipe}"
            with stage(f"writing tables, figures and graphs to {dest}", not args.quiet):
                summaries[recipe] = write_splitting(dest, res, study_config(rcfg, scfg), scfg, extra)
        if len(recipes) > 1:  # the main report again, now with the recipes side by side
            res, rcfg, extra = first
            summaries[recipes[0]] = write_splitting(out, res, study_config(rcfg, scfg), scfg, extra,
                                                    compare={k: summaries[k] for k in recipes[1:]})
        s = summaries[recipes[0]]
        for r, rr in s["runs"].items():
            last = rr["steps"][-1] if rr["steps"] else {}
            print(f"run {r}: {rr['n_nodes']:,} nodes, {rr['n_multi_node_families']:,} families; last step "
                  f"splits {last.get('share_splits', float('nan')):.2f}, persists "
                  f"{last.get('share_persists', float('nan')):.2f}, novel {last.get('share_novel', float('nan')):.2f}")
        su = s.get("split_universality")
        if su:
            print(f"split universality {su['share']:.3f} vs shuffled {su['shuffled_mean']:.3f}; cluster purity "
                  f"{s['map']['purity']['all']['purity']:.3f}")
        print(f"wrote {out}/summary.json, report.md, nodes.parquet, edges.parquet, *.gexf, *.graphml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
