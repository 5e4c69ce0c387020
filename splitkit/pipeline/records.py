"""Small JSON results of analyses and the joint map, cached like every stage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..cache import Artifact, atomic_write_json
from ..config import Config
from .core import VERSIONS, _cache, _claim, _ready, _say, read_artifact_file


@dataclass
class Record:
    """One JSON record (e.g. a scaling grid point) in the cache: a folder with a manifest, sealed
    atomically like every stage, keyed by what the record was computed from."""

    artifact: Artifact

    @property
    def path(self) -> Path:
        return self.artifact.path / "record.json"

    def read(self) -> dict | None:
        """The record when it is cached and intact, else None."""
        return json.loads(self.path.read_text()) if _ready(self.artifact) else None

    def write(self, record: dict) -> dict:
        """Seal ``record`` as this entry (replacing any stale copy); returns it."""
        self.artifact.lock()  # two processes measuring one point write it in turn, not into one folder
        work = self.artifact.begin(resume=False)
        atomic_write_json(work / "record.json", record)
        self.artifact.seal()
        return record


def get_record(cfg: Config, stage: str, params: dict, inputs: dict[str, str], version: int) -> Record:
    """The cache entry of a record of ``stage`` computed with ``params`` from the artifacts ``inputs``
    (stage keys); ``version``: the computing code's version, bumped when its figures would change."""
    return Record(_cache(cfg).artifact(stage, params, inputs, version))


def get_joint_map(cfg: Config, family_keys: dict[str, str], settings: dict, build, progress: bool = True):
    """A joint map of decoder directions (``analyses.maps.joint_map``'s DataFrame), cached.

    ``family_keys``: ``{run: family key}`` of the dictionaries mapped; ``settings``: everything else
    the map depends on (sizes, UMAP and HDBSCAN settings, which rows); ``build()`` makes the map
    when the cache has none. At the paper's sizes the map takes over an hour, so a study that
    fails after it finds it here on the next run.
    """
    import pandas as pd

    deps = {f"dicts_{r}": k for r, k in sorted(family_keys.items())}
    art = _cache(cfg).artifact("maps", settings, deps, VERSIONS["maps"])
    if _claim(art):
        df = read_artifact_file(art.path / "map.parquet", pd.read_parquet)
        df.attrs.update(read_artifact_file(art.path / "attrs.json", lambda p: json.loads(p.read_text())))
        return df
    df = build()
    work = art.begin(resume=False)
    df.to_parquet(work / "map.parquet", index=False)
    atomic_write_json(work / "attrs.json", dict(df.attrs))
    art.seal()
    if progress:
        _say(f"joint map of {len(df):,} directions cached in {art.path}")
    return df
