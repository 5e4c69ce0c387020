"""Where a figure came from: the git revision, the command line and the library versions.

Analyses record these in what they return (a scaling point keeps its revision); writers copy them
into every summary.json.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path


def git_revision(root: Path | None = None) -> str:
    root = root or Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def command_line() -> str | None:
    """The command as typed: ``python -m studies.universality --quiet`` rather than the module's path.

    Arguments are shell-quoted (``--only 'paper-*'``), so the line can be pasted back into a shell.
    """
    if not sys.argv:
        return None
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", sys.argv[0]]
    return " ".join(head) + "".join(" " + shlex.quote(a) for a in sys.argv[1:])


def provenance() -> dict:
    """Code version, command line and library versions: enough to reproduce a figure from its file."""
    import numpy
    import torch

    return {
        "git_revision": git_revision(),
        "command": command_line(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
                       if k in os.environ},
    }
