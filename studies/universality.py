"""Universality study: are the features of transformer A found again in transformer B (another seed)?

    python -m studies.universality                 # embedded default: stdlib corpus, 2 LMs, 2 dictionaries
    python -m studies.universality --preset smoke  # the same path in seconds

Writes summary.json, matches.parquet/.csv, figures and report.md under --out.
"""

from __future__ import annotations

import sys
import time

from studies._common import add_memory_check_arg, add_dict_args, base_parser, config_from_args, dict_overrides, friendly_errors


def main(argv=None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None, help="dictionary size (features) of A and B (default: the preset's)")
    p.add_argument("--seed-a", type=int, default=None, help="seed of transformer A (default: the preset's, 0)")
    p.add_argument("--seed-b", type=int, default=None,
                   help="seed of transformer B, must differ from A's (default: the preset's, 1)")
    add_dict_args(p)
    p.add_argument("--replicates", type=int, default=1,
                   help="dictionary seeds 0..K-1 on the same LM pair; headline figures as mean and 95%% interval")
    p.add_argument("--analysis-tokens", default=None,
                   help="analysis tokens the correlations run over, e.g. '1M' (default: the preset's, 4M; capped by "
                        "the corpus's analysis split); the peak memory grows with it")
    add_memory_check_arg(p)
    p.add_argument("--out", default="results/universality", help="output folder")
    args = p.parse_args(argv)
    with friendly_errors():
        from splitkit.config import ConfigError

        cfg = config_from_args(args)
        over = {}
        if args.seed_a is not None:
            over["seed_a"] = args.seed_a
        if args.seed_b is not None:
            over["seed_b"] = args.seed_b
        d = {}
        if args.size is not None:
            if args.size <= 0:
                raise ConfigError(f"--size must be a positive number of features, got {args.size}")
            d["sizes"] = (args.size,)
        d.update(dict_overrides(args))
        if d:
            over["dict"] = d
        if args.analysis_tokens is not None:
            from splitkit.config import parse_token_count

            over["analysis"] = {"n_tokens": parse_token_count(args.analysis_tokens, "--analysis-tokens")}
        cfg = cfg.with_overrides(**over)
        if cfg.seed_a == cfg.seed_b:
            raise ConfigError(f"--seed-a and --seed-b must differ (both {cfg.seed_a})")
        if args.replicates < 1:
            raise ConfigError(f"--replicates must be a positive number of dictionary seeds, got {args.replicates}")
        from splitkit import budget

        budget.announce(budget.universality_estimate(cfg, args.replicates), cfg.device, args.no_memory_check)
        from splitkit.pipeline import fit_lm_budget

        cfg = fit_lm_budget(cfg, progress=not args.quiet)  # LMs clearly better than bigrams, or a loud line
        from splitkit.report import write_universality
        from splitkit.analyses.universality import run_universality

        t0 = time.perf_counter()
        res = run_universality(cfg.with_overrides(dict={"seed": 0}) if args.replicates > 1 else cfg,
                               progress=not args.quiet)
        if args.replicates > 1:
            from splitkit.analyses.universality import replicate_summary

            sums = [res["summary"]] + [run_universality(cfg.with_overrides(dict={"seed": s}), progress=not args.quiet)
                                       ["summary"] for s in range(1, args.replicates)]
            res["summary"]["replicates"] = replicate_summary(
                sums, f"dictionary seeds 0..{args.replicates - 1} on LMs {cfg.seed_a} / {cfg.seed_b}; "
                      "mean and Student-t interval over replicates")
        summary = write_universality(args.out, res, cfg, {"wall_s": time.perf_counter() - t0})
        u = summary["universality"]
        print(f"features (counted) median max act corr {u['features']['median_max_act_corr']:.3f} | "
              f"all alive {u['features']['all_alive']['median_max_act_corr']:.3f} | "
              f"neurons {u['neurons']['median_max_act_corr']:.3f} | "
              f"chance {u['chance']['features_shuffled_median_max_act_corr']:.3f}")
        v, red, iv = u["views"]["features"], u["redundancy"], u["intervals"]["features_minus_neurons"]
        print(f"one-to-one {v['one_to_one_median']:.3f} | de-duplicated {v['dedup_many_to_one_median']:.3f} | "
              f"features - neurons {iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}] | twins > 0.9: "
              f"A {red['A']['twin_share_act_0.9']:.1%}, B {red['B']['twin_share_act_0.9']:.1%}")
        print(f"wrote {args.out}/summary.json, report.md, matches.parquet ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
