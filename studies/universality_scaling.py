"""Universality scaling study: how the features-vs-neurons finding depends on SAE tokens, dictionary
size, training recipe and the number of analysis tokens.

    python -m studies.universality_scaling                  # the default grid (hours on 2 CPU cores; resumable)
    python -m studies.universality_scaling --preset smoke   # the same path in a minute or two

Trains (or reuses) one family of dictionaries per recipe on each of the cached runs A and B, with
snapshots at every budget, then measures every grid point. Each finished point is saved at once, so
an interrupted grid resumes where it stopped. Writes scaling.parquet/.csv, figures, summary.json and
report.md under --out, and the table to docs/bench/universality_scaling.json (default preset).
"""

from __future__ import annotations

import sys
import time

from studies._common import base_parser, config_from_args, friendly_errors


def _items(text: str) -> tuple[str, ...]:
    """A comma-separated option's items, blanks dropped."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _l0_targets(spec: str) -> tuple[float, ...]:
    """``'8,16,32'`` -> ``(8.0, 16.0, 32.0)``, with a one-line error for anything else."""
    from splitkit.config import ConfigError

    items = [t.strip() for t in spec.split(",")]
    try:
        vals = [float(t) for t in items]
    except ValueError:
        raise ConfigError(f"--target-l0s must be comma-separated mean L0s such as '8,16,32', got {spec!r}") from None
    if any(not v > 0 or v != v or v == float("inf") for v in vals):
        raise ConfigError(f"--target-l0s must be positive mean L0s, got {spec!r}")
    return tuple(sorted(set(vals)))


def main(argv=None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    from splitkit.train.recipes import recipe_names

    p.add_argument("--recipes", default=None,
                   help=f"comma-separated training recipes: {', '.join(recipe_names())} (default: the preset's grid)")
    p.add_argument("--sizes", default=None, help="dictionary sizes, e.g. '1024,2048,4096' or '1024..4096'")
    p.add_argument("--target-l0s", default=None,
                   help="fixed-L0 arms: target mean L0s, e.g. '8,16,32'; every penalised recipe trains once more "
                        "per target with its lambda steered toward it (ids 'l1_log@L0=16-n...'; default: none)")
    p.add_argument("--no-fixed-lambda", action="store_true",
                   help="train only the fixed-L0 arms of --target-l0s, not each recipe at its fixed lambda; the "
                        "fixed-L0 figure then takes its fixed-lambda lines from the earlier rows of --table-json")
    p.add_argument("--budgets", default=None,
                   help="SAE training tokens at which to measure, e.g. '500k,1M,2M,4M,8M' (the largest ends the run), "
                        "for every recipe (default: the preset's; the default preset's paper recipe uses 0.25M-4M)")
    p.add_argument("--analysis-tokens", default=None,
                   help="analysis-set sizes the correlations run over, e.g. '500k,1M,4M,16M'; sizes past the "
                        "corpus's analysis split continue into held-out package sources and are streamed")
    p.add_argument("--stream-budgets", choices=("ends", "last", "all"), default=None,
                   help="budgets measured on analysis sets past the corpus's analysis split (streamed through "
                        "the LMs, about 5 min per 4096 features, run and 16M tokens on 2 cores): each recipe's "
                        "first and last (ends), last only, or all (default: the preset's)")
    p.add_argument("--only", default=None,
                   help="comma-separated shell patterns of point ids (recipe-n<size>-t<SAE tokens>-a<analysis "
                        "tokens>, e.g. 'l1_decnorm-n1024-t500000-*'): measure only the matching points of the grid "
                        "(the families are still the whole grid's); others are read back if finished")
    p.add_argument("--seed-a", type=int, default=None, help="seed of transformer A (default: the preset's, 0)")
    p.add_argument("--seed-b", type=int, default=None,
                   help="seed of transformer B, must differ from A's (default: the preset's, 1)")
    p.add_argument("--out", default="results/universality_scaling", help="output folder")
    p.add_argument("--table-json", default=None,
                   help="where to write the grid table as JSON (default: docs/bench/universality_scaling.json "
                        "for the default preset, none otherwise; 'none' to skip)")
    p.add_argument("--report-only", action="store_true",
                   help="train and measure nothing: write the table, figures and report from the points finished "
                        "so far (e.g. while the grid runs in the background)")
    args = p.parse_args(argv)
    with friendly_errors():
        from splitkit.analyses.scaling import run_scaling
        from splitkit.config import ConfigError, get_scaling_preset, parse_counts, parse_sizes
        from splitkit.report.scaling import write_scaling

        cfg = config_from_args(args)
        over = {k: v for k, v in (("seed_a", args.seed_a), ("seed_b", args.seed_b)) if v is not None}
        cfg = cfg.with_overrides(**over)
        if cfg.seed_a == cfg.seed_b:
            raise ConfigError(f"--seed-a and --seed-b must differ (both {cfg.seed_a})")
        grid = {}
        if args.recipes:
            grid["recipes"] = _items(args.recipes)
        if args.sizes:
            grid["sizes"] = tuple(sorted(set(parse_sizes(args.sizes))))
        if args.budgets:
            grid["budgets"] = parse_counts(args.budgets, "--budgets")
            grid["paper_budgets"] = None  # one set of budgets for every recipe
        if args.target_l0s:
            grid["target_l0s"] = _l0_targets(args.target_l0s)
        if args.no_fixed_lambda:
            grid["fixed_lambda"] = False
        if args.stream_budgets:
            grid["stream_budgets"] = args.stream_budgets
        if args.analysis_tokens:
            grid["analysis_tokens"] = parse_counts(args.analysis_tokens, "--analysis-tokens")
        sc = get_scaling_preset(args.preset).replace(**grid)
        table = args.table_json
        if table is None:
            table = "docs/bench/universality_scaling.json" if args.preset == "default" else None
        elif table.lower() == "none":
            table = None
        t0 = time.perf_counter()
        only = None
        if args.only is not None:
            only = _items(args.only)
            if not only:
                raise ConfigError("--only needs at least one point-id pattern, e.g. 'l1_decnorm-n1024-*'")
        if not args.report_only:
            from splitkit.pipeline import fit_lm_budget

            cfg = fit_lm_budget(cfg, progress=not args.quiet)  # the universality study's rule, so the same LMs
        df = run_scaling(cfg, sc, args.out, progress=not args.quiet, report_only=args.report_only, only=only)
        summary = write_scaling(args.out, df, cfg, sc, {"wall_s": time.perf_counter() - t0}, table_json=table)
        def f(v, spec=".3f"):
            return "n/a" if v is None else format(v, spec)

        for h in summary["headline"]:
            print(f"{h['recipe']:>10} n={h['n_features']:<6} {h['sae_tokens']:>11,} SAE tokens: features (paper count) "
                  f"{f(h['features_paper_median'])} | all alive {f(h['features_all_alive_median'])} | "
                  f"neurons {f(h['neurons_median'])} | dead {f(h['dead_frac_a'], '.1%')} | "
                  f"loss recovered {f(h['loss_recovered_zero_a'], '.1%')}")
        print(f"wrote {args.out}/summary.json, report.md, scaling.parquet ({len(df)} points, "
              f"{time.perf_counter() - t0:.0f} s)" + (f"; table {table}" if table else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
