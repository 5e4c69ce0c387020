"""Automaton study: features that chain like a finite-state automaton, against neurons and across seeds.

    python -m studies.fsa                  # runs A and B at the universality default size (2,048 features)
    python -m studies.fsa --preset smoke   # the same path in seconds
    python -m studies.fsa --size 4096 --runs A --min-pmi 1.5

Writes GEXF/GraphML graphs, edges/automata/transitions tables (Parquet + CSV), figures of the top
automata, summary.json and report.md under --out.
"""

from __future__ import annotations

import sys
import time

from studies._common import base_parser, config_from_args, friendly_errors


def _runs(text: str) -> tuple[str, ...]:
    from splitkit.config import ConfigError

    runs = tuple(r.strip().upper() for r in text.split(",") if r.strip())
    if not runs or any(r not in ("A", "B") for r in runs) or len(set(runs)) != len(runs):
        raise ConfigError(f"--runs must be A, B or A,B, got {text!r}")
    return runs


def main(argv=None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=None,
                   help="dictionary size (features) of each run (default: the preset's, as in the universality study)")
    p.add_argument("--runs", default="A,B", help="runs to analyse: A, B or A,B (the cross-seed check needs both)")
    p.add_argument("--tokens", default=None, help="analysis tokens used, e.g. '1M' (default: the whole store)")
    g = p.add_argument_group("edge thresholds (default: the preset's FSA section, splitkit.config.FSA_PRESETS; "
                             "the shuffled null keeps no edge at the default preset's on the stdlib)")
    g.add_argument("--min-count", type=int, default=None, help="co-occurrences of X at t and Y at t+1 (default: the preset's)")
    g.add_argument("--min-pmi", type=float, default=None, help="ln lift of Y after X (default: the preset's)")
    g.add_argument("--min-mech", type=float, default=None,
                   help="X's standardised logit effect on Y's tokens (default: the preset's)")
    g.add_argument("--alpha", type=float, default=None,
                   help="family-wise level of the co-occurrence test over all ordered pairs (default: the preset's)")
    g.add_argument("--min-cond-prob", type=float, default=None,
                   help="P(Y at t+1 | X at t) at least this (default: the preset's)")
    g.add_argument("--max-out", type=int, default=None,
                   help="each feature keeps only its most likely successors, this many (default: the preset's)")
    g.add_argument("--neuron-threshold", type=float, default=None,
                   help="activation above which a neuron is active (default: the preset's)")
    g.add_argument("--top", type=int, default=None, help="automata drawn and exported one by one (default: the preset's)")
    p.add_argument("--out", default="results/fsa", help="output folder")
    args = p.parse_args(argv)
    with friendly_errors():
        from splitkit.config import ConfigError, get_fsa_preset, parse_token_count

        cfg = config_from_args(args)
        runs = _runs(args.runs)
        if args.size is not None:
            if args.size <= 0:
                raise ConfigError(f"--size must be a positive number of features, got {args.size}")
            cfg = cfg.with_overrides(dict={"sizes": (args.size,)})
        over = {}
        if args.tokens is not None:
            over["n_tokens"] = parse_token_count(args.tokens, "--tokens")
        for flag, key in (("min_count", "min_count"), ("min_pmi", "min_pmi"), ("min_mech", "min_mech"),
                          ("alpha", "alpha"), ("min_cond_prob", "min_cond_prob"), ("max_out", "max_out"),
                          ("neuron_threshold", "neuron_threshold"), ("top", "n_top")):
            v = getattr(args, flag)
            if v is not None:
                over[key] = v
        try:
            fcfg = get_fsa_preset(args.preset).replace(**over)
        except ValueError as e:  # the section's own check, named as the option
            raise ConfigError(f"bad threshold option: {e}") from None
        from splitkit.analyses.fsa_run import run_fsa
        from splitkit.report.fsa import write_fsa

        from splitkit.pipeline import fit_lm_budget

        t0 = time.perf_counter()
        cfg = fit_lm_budget(cfg, progress=not args.quiet)  # the universality study's rule, so the same LMs
        res = run_fsa(cfg, fcfg, runs=runs, progress=not args.quiet)
        summary = write_fsa(args.out, res, cfg, {"wall_s": time.perf_counter() - t0})
        for run, rr in summary["runs"].items():
            f, n = rr["bases"]["features"], rr["bases"]["neurons"]
            print(f"run {run}: features {f['n_edges']} edges (null {f['null_edges']}), {f['n_automata']} automata, "
                  f"largest {f['largest']} | neurons {n['n_edges']} edges (null {n['null_edges']}), "
                  f"{n['n_automata']} automata, largest {n['largest']}")
        for basis, c in summary["cross_seed"].items():
            sh = c["share"]
            print(f"across seeds, {basis}: {sh['share'] if sh['share'] is not None else float('nan'):.3f} of A's "
                  f"{sh['n_edges']} automaton edges linked in B (shuffled "
                  f"{sh['shuffled_mean'] if sh['shuffled_mean'] is not None else float('nan'):.3f})")
        print(f"wrote {args.out}/summary.json, report.md, graphs and tables ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
