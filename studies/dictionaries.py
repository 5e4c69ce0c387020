"""Train one family of dictionaries, over the processes torchrun starts (or as one process).

    torchrun --nproc_per_node 2 -m studies.dictionaries --preset smoke --seed 0 --sizes 64,128 --mode sizes
    python -m studies.dictionaries --sizes 512..4096          # one process

The family is stored as the pipeline's cached family, so every study then finds it ready. The work is
done by :func:`splitkit.distributed.train_pipeline_family`; this module only parses arguments.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from splitkit.distributed import MODES, train_pipeline_family
from studies._common import base_parser, config_from_args


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
    p.add_argument("--recipe", default=None, choices=["paper", "l1_decnorm", "topk"],
                   help="dictionary training recipe (default: the preset's)")
    p.add_argument("--mode", default="sizes", choices=list(MODES),
                   help="sizes: deal the dictionaries to the processes (bitwise equal to one process); "
                        "data: split every batch over the processes and average the gradients (one large size)")
    p.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"],
                   help="torch.distributed backend (auto: nccl with --device cuda, else gloo)")
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
        if args.recipe:
            d["recipe"] = args.recipe
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
