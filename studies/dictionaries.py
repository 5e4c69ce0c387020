"""Train one family of dictionaries, over the processes torchrun starts (or as one process), and report it.

    torchrun --nproc_per_node 2 -m studies.dictionaries --preset smoke --seed 0 --sizes 64,128 --mode sizes
    python -m studies.dictionaries --sizes 512..4096          # one process
    python -m studies.dictionaries --sizes 512..4096 --out results/dicts_512_4096
    python -m studies.dictionaries --no-report                # train (or check) the family only

The family is stored as the pipeline's cached family, so every study then finds it ready. Then process 0
evaluates every size (cached features stage) and writes summary.json, metrics.csv/.parquet,
density_hist.png/.svg and report.md under --out. The work is done by
:func:`splitkit.distributed.train_pipeline_family`, :func:`splitkit.family_metrics.get_family_metrics` and
:mod:`splitkit.report.dictionaries`; this module only parses arguments.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from splitkit.distributed import MODES, train_pipeline_family
from studies._common import add_dict_args, base_parser, config_from_args, dict_overrides


@contextmanager
def _friendly_errors(rank: int):
    """Known user errors end in one line naming the fix (printed by process 0 only), not a traceback."""
    from splitkit.cache import CacheError
    from splitkit.config import ConfigError
    from splitkit.corpus import CorpusError
    from splitkit.pipeline import PipelineError

    try:
        yield
    except (ConfigError, CorpusError, PipelineError, CacheError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if rank == 0:
            print("\ninterrupted: finished stages are cached and training resumes from its last checkpoint; "
                  "run the same command again", file=sys.stderr)
        raise SystemExit(130) from None


def main(argv: list[str] | None = None) -> int:
    from splitkit.config import ConfigError, parse_sizes

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    p = base_parser("Train one family of dictionaries over the processes that torchrun starts, and store it as "
                    "the pipeline's cached family (pipeline.get_family then finds it ready). Without torchrun "
                    "it runs as one process.")
    p.prog = "torchrun --nproc_per_node N -m studies.dictionaries"
    if rank != 0:
        p._print_message = lambda message, file=None: None  # usage, --help and errors from process 0 only
    p.add_argument("--seed", type=int, default=None, help="seed of the language model whose MLP the family "
                                                          "is trained on (default: the preset's seed A)")
    p.add_argument("--sizes", default=None, help="dictionary sizes: '4096', '512,1024,4096' or '512..131072' "
                                                 "(default: the preset's)")
    add_dict_args(p)
    p.add_argument("--mode", default="sizes", choices=list(MODES),
                   help="sizes: deal the dictionaries to the processes (bitwise equal to one process); "
                        "data: split every batch over the processes and average the gradients (one large size)")
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                   help="torch.distributed backend (auto: nccl with --device cuda, else gloo)")
    p.add_argument("--out", default=None,
                   help="folder of the family's report (summary.json, metrics.csv/.parquet, figures, report.md); "
                        "default results/dictionaries/lm<seed>")
    p.add_argument("--no-report", action="store_true",
                   help="only train (or find) the family; skip evaluating it and writing the report")
    p.add_argument("--timeout-min", type=float, default=24 * 60,
                   help="minutes a process waits for the others (process 0 may first build the LM and the "
                        "activation store while the others wait)")
    args = p.parse_args(argv)
    with _friendly_errors(rank):
        cfg = config_from_args(args)
        over: dict[str, Any] = {}
        d: dict[str, Any] = {}
        if args.sizes is not None:
            d["sizes"] = parse_sizes(args.sizes)
        d.update(dict_overrides(args))
        if d:
            over["dict"] = d
        cfg = cfg.with_overrides(**over)
        seed = cfg.seed_a if args.seed is None else args.seed
        if args.timeout_min <= 0:
            raise ConfigError(f"--timeout-min must be positive, got {args.timeout_min}")
        cuda = cfg.device.startswith("cuda")
        backend = args.backend if args.backend != "auto" else ("nccl" if cuda else "gloo")
        if backend == "nccl" and not cuda:
            raise ConfigError("--backend nccl needs --device cuda (NCCL moves GPU tensors); use --backend gloo on CPU")
        if backend == "nccl" and not dist.is_nccl_available():
            raise ConfigError("--backend nccl: this torch build has no NCCL; use --backend gloo")
        device = cfg.device
        if cuda:
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"process {local_rank} of this machine has no GPU of its own "
                                  f"({torch.cuda.device_count()} visible); start at most one process per GPU "
                                  "(--nproc_per_node)")
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        t0 = time.perf_counter()
        if "RANK" in os.environ and world > 1:
            dist.init_process_group(backend, timeout=timedelta(minutes=args.timeout_min),
                                    **({"device_id": torch.device(device)} if backend == "nccl" else {}))
        try:
            path = train_pipeline_family(cfg, seed, mode=args.mode, device=device,
                                         progress=not args.quiet and rank == 0)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        if rank == 0:
            print(f"family of LM seed {seed}, sizes {list(cfg.dict.sizes)}: {path}")
        # The evaluation runs on process 0 alone, after the process group is gone: the others are done.
        if rank == 0 and not args.no_report:
            from splitkit.family_metrics import get_family_metrics
            from splitkit.report import family_lines, family_table, write_family_report

            out = args.out or f"results/dictionaries/lm{seed}"
            fm = get_family_metrics(cfg, seed, progress=not args.quiet)
            table = family_table(fm.stats_by_size, fm.train_summary)
            write_family_report(out, table, fm.stats_by_size, cfg, fm.train_summary,
                                {"seed": seed, "family_key": fm.family_key, "family_folder": str(fm.family_folder),
                                 "wall_s": time.perf_counter() - t0})
            for line in family_lines(table):
                print(line)
            print(f"wrote {out}/summary.json, metrics.csv, report.md ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
