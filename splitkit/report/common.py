"""Shared helpers of the writers: atomic tables and figures, JSON-ready values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import atomic_path
from .escape import csv_safe


def write_table(df: pd.DataFrame, path: Path, csv: bool = True) -> None:
    """Parquet (and CSV beside it), each through a temp file and rename.

    The CSV's text cells go through :func:`escape.csv_safe` (a cell that a spreadsheet would run as a
    formula gets a leading quote); the Parquet copy keeps the exact text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix, writer in ((".parquet", lambda p: df.to_parquet(p, index=False)),
                           (".csv", lambda p: csv_safe(df).to_csv(p, index=False))):
        if suffix == ".csv" and not csv:
            continue
        with atomic_path(path.with_suffix(suffix)) as tmp:
            writer(tmp)


def save_figure(fig, path_stem: Path) -> list[str]:
    """Save ``fig`` as PNG and SVG; returns the file names."""
    import matplotlib.pyplot as plt

    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    names = []
    for ext in ("png", "svg"):
        target = path_stem.with_suffix(f".{ext}")
        with atomic_path(target, suffix=f".{ext}") as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format=ext)
        names.append(target.name)
    plt.close(fig)
    return names


def jsonable(x):
    """JSON-ready, recursively: numpy to Python, NaN/inf to None, DataFrames to records, keys to str."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, pd.DataFrame):
        return [jsonable(r) for r in x.to_dict("records")]
    if isinstance(x, np.ndarray):
        return [jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
