"""Argument parsing shared by the studies: presets, corpus, device, cache, and one-line errors."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where the help does not already say what the default is, and
    never ``(default: None)``: a None default means "the preset's", which the help states."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    p.add_argument("--preset", default="default", choices=["smoke", "default", "paper"],
                   help="named scale: smoke (seconds, for tests), default (a first run on a 2-core CPU), "
                        "paper (the paper's sizes; needs a GPU)")
    p.add_argument("--corpus", default=None,
                   help="text file, folder, .jsonl or .parquet to use instead of the embedded standard-library corpus")
    p.add_argument("--corpus-glob", default=None, help="file pattern inside a --corpus folder (default **/*.py for "
                                                       "the stdlib; use e.g. '**/*.txt')")
    p.add_argument("--text-column", default=None, help="column holding the text in a .jsonl/.parquet corpus")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: the preset's)")
    p.add_argument("--cache", default=None, help="cache folder for every pipeline stage (default .cache)")
    p.add_argument("--lm-tokens", default=None,
                   help="tokens each transformer trains on, e.g. '3M' or '12M' (default: the preset's; epochs of "
                        "the train split past its size)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every cached file against its manifest, whatever the stamps of earlier checks say")
    return p


def config_from_args(args):
    from splitkit.config import get_preset

    cfg = get_preset(args.preset)
    over = {}
    corpus = {}
    if args.corpus is not None:
        corpus["path"] = args.corpus
        corpus["glob"] = args.corpus_glob or "**/*"
    elif args.corpus_glob:
        corpus["glob"] = args.corpus_glob
    if args.text_column:
        corpus["text_column"] = args.text_column
    if corpus:
        over["corpus"] = corpus
    if args.device:
        over["device"] = args.device
    if args.cache:
        over["cache_dir"] = args.cache
    if getattr(args, "lm_tokens", None) is not None:
        from splitkit.config import parse_token_count

        over["lm"] = {"n_tokens": parse_token_count(args.lm_tokens, "--lm-tokens")}
        over["lm_budget_doublings"] = 0  # a budget named by hand is the budget
    cfg = cfg.with_overrides(**over)
    check_device(cfg.device)
    if getattr(args, "verify", False):
        import splitkit.cache

        splitkit.cache.FORCE_VERIFY = True
    return cfg


def check_device(name: str) -> None:
    """Fail in one line, before any work, on a device torch cannot name or this machine lacks."""
    import torch

    from splitkit.config import ConfigError

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: splitkit runs on cpu or cuda, not {dev.type}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but this torch build sees no CUDA device; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def add_dict_args(p: argparse.ArgumentParser) -> None:
    """Dictionary options shared by the studies that train dictionaries."""
    from splitkit.train.recipes import recipe_names

    p.add_argument("--recipe", default=None, choices=list(recipe_names()),
                   help="dictionary training recipe (default: the preset's; see docs/recipes.md)")
    p.add_argument("--sae-tokens", default=None,
                   help="tokens each dictionary trains on, e.g. '2M' or '8M' (default: the preset's)")
    p.add_argument("--l1-coeff", type=float, default=None,
                   help="sparsity penalty lambda of the L1 recipes (default: the preset's; see docs/recipes.md)")
    p.add_argument("--target-l0", type=float, default=None,
                   help="steer each dictionary's lambda during training to this mean L0 (L1 recipes; --l1-coeff "
                        "is then the starting lambda; default: lambda fixed)")


def add_memory_check_arg(p: argparse.ArgumentParser) -> None:
    """``--no-memory-check``, for the studies that print a ``splitkit.budget`` estimate before they start."""
    p.add_argument("--no-memory-check", action="store_true",
                   help="start even when the estimated peak memory exceeds what the machine has available "
                        "(also: SPLITKIT_NO_MEMORY_CHECK=1)")


def dict_overrides(args) -> dict:
    """The ``dict`` section overrides that ``add_dict_args``'s options ask for."""
    from splitkit.config import ConfigError, parse_token_count

    d = {}
    if args.recipe:
        d["recipe"] = args.recipe
    if args.sae_tokens is not None:
        d["n_tokens"] = parse_token_count(args.sae_tokens, "--sae-tokens")
    if args.l1_coeff is not None:
        if not args.l1_coeff > 0:
            raise ConfigError(f"--l1-coeff must be a positive number, got {args.l1_coeff}")
        d["l1_coeff"] = args.l1_coeff
    if getattr(args, "target_l0", None) is not None:
        if not args.target_l0 > 0:
            raise ConfigError(f"--target-l0 must be a positive mean L0, got {args.target_l0}")
        d["target_l0"] = args.target_l0
    return d


@contextmanager
def friendly_errors():
    """Known user errors end in one line naming the fix, not a traceback."""
    from splitkit.cache import CacheError
    from splitkit.config import ConfigError
    from splitkit.corpus import CorpusError
    from splitkit.pipeline import PipelineError
    from splitkit.sae import SAEFormatError

    try:
        yield
    except SAEFormatError as e:
        print(f"error: {e}; if that folder is in the cache, delete it and the stage is rebuilt", file=sys.stderr)
        raise SystemExit(2) from None
    except (ConfigError, CorpusError, PipelineError, CacheError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are cached and training resumes from its last checkpoint; "
              "run the same command again", file=sys.stderr)
        raise SystemExit(130) from None
