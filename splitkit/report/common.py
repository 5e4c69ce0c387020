"""Shared helpers for reports: provenance, atomic tables and figures."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd


def git_revision(root: Path | None = None) -> str:
    root = root or Path(__file__).resolve().parents[2]
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
    }


def write_table(df: pd.DataFrame, path: Path, csv: bool = True) -> None:
    """Parquet (and CSV beside it), each through a temp file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix, writer in ((".parquet", lambda p: df.to_parquet(p, index=False)),
                           (".csv", lambda p: df.to_csv(p, index=False))):
        if suffix == ".csv" and not csv:
            continue
        target = path.with_suffix(suffix)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            writer(tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def save_figure(fig, path_stem: Path) -> list[str]:
    """Save ``fig`` as PNG and SVG; returns the file names."""
    import matplotlib.pyplot as plt

    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    names = []
    for ext in ("png", "svg"):
        target = path_stem.with_suffix(f".{ext}")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".{ext}")
        os.close(fd)
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format=ext)
        os.replace(tmp, target)
        names.append(target.name)
    plt.close(fig)
    return names
