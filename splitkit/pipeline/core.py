"""What every stage shares: the stage code versions, the cache of a config, the one-line error and
the progress line, and the checks that decide whether a cached artifact can be used."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..cache import Artifact, Cache, CacheError
from ..config import Config

log = logging.getLogger("splitkit")


# Code versions of each stage: bump when the stage's output for the same config would change.
# acts 3: shards stored as CSR (the same values bit for bit, other files), see activations.py.
VERSIONS = {"tokens": 2, "tokens_extra": 1, "lm": 1, "acts": 3, "dicts": 1, "sae_eval": 1, "features": 1,
            "effects": 1, "maps": 1}


class PipelineError(RuntimeError):
    """A stage cannot run; the message says what to fix."""


def _cache(cfg: Config) -> Cache:
    return Cache(cfg.cache_dir)


def _say(msg: str) -> None:
    print(f"[splitkit] {msg}", file=sys.stderr, flush=True)


def read_artifact_file(path: Path, loader):
    """``loader(path)``, or a one-line PipelineError naming the folder to delete when the file cannot be read
    (a file damaged under a manifest rebuilt by hand, say: its checksums then vouch for the damage)."""
    try:
        return loader(path)
    except Exception as e:  # numpy, scipy and zipfile raise many types for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(f"{path} is unreadable ({type(e).__name__}: {reason[:120]}); delete {path.parent} "
                            "and the stage is rebuilt") from None


def _ready(art: Artifact) -> bool:
    if not art.path.exists():
        return False
    try:
        art.check(verify=True)
        return True
    except CacheError as e:
        _say(f"rebuilding {art.stage}/{art.key}: {e}")
        return False


def _claim(art: Artifact) -> bool:
    """True when ``art`` is complete, after waiting for any other process that is building it;
    otherwise False with its build lock held, for the caller to build it (``art.seal()`` releases it)."""
    if _ready(art):
        return True
    art.lock(on_wait=lambda: _say(f"waiting: another process is building {art.stage}/{art.key} ..."))
    if art.is_complete(verify=True):  # built by the process we waited for
        art.unlock()
        return True
    return False

