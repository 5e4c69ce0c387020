"""Content-addressed artifact cache: every pipeline stage reads and writes through here.

An artifact lives in ``<root>/<stage>/<key>/``. The key is a hash of the stage's own config, the keys
of the artifacts it reads, and the stage's code version (bumped by hand when the output changes).
A folder counts as complete only when its ``manifest.json`` (written last) lists every file with its
size and sha256 and all of them match; anything else is partial and is rebuilt.

Stages that take long (LM training) work in ``<key>.partial/`` so an interrupted run resumes from its
last checkpoint there; when done, the folder is sealed with a manifest and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

try:  # build locks; where there is no fcntl (Windows) concurrent builds are not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A cache artifact is missing, partial or corrupt."""


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hex digest of a JSON-able object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def sha256_file(path: Path, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _read_umask() -> int:
    mask = os.umask(0o022)  # os.umask can only be read by setting it: done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp"):
    """A temp file name beside ``path`` (``suffix`` for writers that read it), moved onto ``path`` with
    ``os.replace`` when the block succeeds and removed when it fails, so ``path`` is never half
    written. The file gets the mode a plain ``open`` would give (0666 less the umask): ``mkstemp``'s
    0600 would leave results unreadable to the rest of a group that shares them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync'd, and ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    # numpy scalars and paths show up in summaries; everything else is a bug worth seeing.
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def atomic_save_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """safetensors.torch.save_file through a temp file, so a crash never leaves half a file."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


@dataclass
class Artifact:
    """One stage output folder. ``path`` is where the finished artifact lives."""

    stage: str
    key: str
    path: Path
    spec: dict

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    def is_complete(self, verify: bool = True) -> bool:
        try:
            self.check(verify=verify)
            return True
        except CacheError:
            return False

    def check(self, verify: bool = True) -> None:
        """Raise CacheError if the artifact is absent, partial or corrupt."""
        check_manifest(self.path, verify=verify)

    def begin(self, resume: bool = True) -> Path:
        """Return the work folder for building this artifact (kept across interruptions if resume)."""
        work = self.partial_path
        if work.exists() and not resume:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_json(work / "spec.json", self.spec)
        return work

    def seal(self) -> Path:
        """Write the manifest into the work folder, move it into place and release the build lock."""
        work = self.partial_path
        write_manifest(work)
        if self.path.exists():  # a stale or corrupt copy: replaced, never merged
            shutil.rmtree(self.path)
        os.replace(work, self.path)
        self.unlock()
        return self.path

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def lock(self, on_wait: Callable[[], None] | None = None) -> None:
        """Hold this artifact's build lock (``<key>.lock`` beside it) until :meth:`seal` or :meth:`unlock`.

        Blocks while another process holds it (``on_wait`` is called once first), so two studies
        sharing a cache never build the same artifact into one work folder. Re-entrant within a
        process; the operating system releases it when the process ends, however it ends.
        """
        if fcntl is None or str(self.path) in _HELD_LOCKS:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD_LOCKS[str(self.path)] = fd

    def unlock(self) -> None:
        fd = _HELD_LOCKS.pop(str(self.path), None)
        if fd is not None:
            os.close(fd)  # closing the descriptor releases its flock


# Build locks this process holds: artifact path -> descriptor of its open lock file. Lock files
# stay on disk (deleting one while another process waits on it would let a third build beside it).
_HELD_LOCKS: dict[str, int] = {}


def write_manifest(folder: Path) -> dict:
    folder = Path(folder)
    files = {}
    stamp = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, VERIFIED_STAMP) and not p.name.endswith(".tmp"):
            rel = p.relative_to(folder).as_posix()
            st = p.stat()
            files[rel] = {"size": st.st_size, "sha256": sha256_file(p)}
            stamp.append([rel, *_identity(st)])
    manifest = {"files": files}
    atomic_write_json(folder / MANIFEST, manifest)
    atomic_write_json(folder / VERIFIED_STAMP, stamp)  # just hashed: no need to hash again
    return manifest


# Checksums already verified in this process, keyed by every file's identity, so a second get_X()
# in one run does not re-hash gigabytes, while any rewrite of a file forces a fresh check.
_VERIFIED: set[tuple] = set()
# Across processes: every file's identity when its checksums last matched. A warm run then hashes
# nothing (the activation stores are gigabytes); a file rewritten, truncated or replaced since is
# hashed again. The identity holds what a user cannot reset casually as well as size and mtime:
# the inode and the ctime (``touch -d`` restores an mtime but moves the ctime).
VERIFIED_STAMP = ".verified.json"
# ``--verify`` of the studies: hash every file whatever the stamps say.
FORCE_VERIFY = False


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _listed_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.name not in (MANIFEST, VERIFIED_STAMP) and not p.name.endswith(".tmp")}


def _read_manifest(mpath: Path) -> dict:
    """The manifest's ``files`` mapping, or CacheError when it is not the shape write_manifest writes."""
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise CacheError(f"{mpath}: unreadable manifest ({e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise CacheError(f"{mpath}: manifest lists no files (expected {{'files': {{name: {{size, sha256}}}}}})")
    for rel, meta in files.items():
        if not (isinstance(meta, dict) and isinstance(meta.get("size"), int) and isinstance(meta.get("sha256"), str)):
            raise CacheError(f"{mpath}: bad entry for {rel!r} (expected size and sha256)")
    return manifest


def check_manifest(folder: Path, verify: bool = True) -> dict:
    """Check every file listed in ``folder/manifest.json`` (size always, sha256 if ``verify``)."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CacheError(f"{folder}: no manifest (absent or interrupted build)")
    manifest = _read_manifest(mpath)
    files = manifest["files"]
    unlisted = sorted(_listed_files(folder) - set(files))
    if unlisted:  # a manifest that does not cover the folder vouches for nothing in it
        raise CacheError(f"{folder}: file {unlisted[0]!r} is not in the manifest")
    stamp = []
    for rel, meta in files.items():
        p = folder / rel
        if not p.is_file():
            raise CacheError(f"{p}: missing file listed in manifest")
        st = p.stat()
        if st.st_size != meta["size"]:
            raise CacheError(f"{p}: size {st.st_size} != {meta['size']} in manifest")
        stamp.append((rel, *_identity(st)))
    memo = (str(folder.resolve()), tuple(stamp))
    if verify and (FORCE_VERIFY or memo not in _VERIFIED):
        try:
            stamped = [tuple(x) for x in json.loads((folder / VERIFIED_STAMP).read_text())]
        except (OSError, ValueError, TypeError):
            stamped = None
        if FORCE_VERIFY or stamped != sorted(stamp):
            for rel, meta in files.items():
                if sha256_file(folder / rel) != meta["sha256"]:
                    raise CacheError(f"{folder / rel}: checksum mismatch (corrupt file)")
            try:
                atomic_write_json(folder / VERIFIED_STAMP, sorted(stamp))
            except OSError:  # a read-only cache is still checked, just every time
                pass
        _VERIFIED.add(memo)
    return manifest


class Cache:
    """Maps (stage, config, inputs, version) to an :class:`Artifact` folder under ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def artifact(self, stage: str, config: dict, inputs: dict[str, str] | None = None, version: int = 1) -> Artifact:
        spec = {"stage": stage, "version": version, "config": config, "inputs": dict(inputs or {})}
        key = stable_hash(spec)
        return Artifact(stage=stage, key=key, path=self.root / stage / key, spec=spec)


# --- python -m splitkit.cache info | prune ---------------------------------------------------------

def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _what(spec: dict) -> str:
    """A short line of what made an artifact: its config's leaf values that identify it most."""
    flat = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = obj

    walk("", spec.get("config", {}))
    keep = [k for k in flat if k.rsplit(".", 1)[-1] in ("seed", "n_tokens", "sizes", "recipe", "split", "path", "n", "size")]
    return ", ".join(f"{k}={flat[k]}" for k in keep)[:120]


def inventory(root: str | os.PathLike) -> list[dict]:
    """One row per artifact folder under ``root``: stage, key, state (complete / partial / broken), bytes, what."""
    rows = []
    root = Path(root)
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            if folder.name.endswith(".partial"):
                state = "partial"
            else:
                try:
                    check_manifest(folder, verify=False)
                    state = "complete"
                except CacheError:
                    state = "broken"
            try:
                spec = json.loads((folder / "spec.json").read_text())
            except (OSError, ValueError):
                spec = {}
            rows.append({"stage": stage_dir.name, "key": folder.name, "state": state,
                         "bytes": _folder_bytes(folder), "what": _what(spec) if isinstance(spec, dict) else ""})
    return rows


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m splitkit.cache",
                                description="See what the pipeline cache holds and reclaim its space.")
    p.add_argument("--cache", default=".cache", help="cache folder (default .cache)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="each stage's artifacts: state, size and what made them")
    pr = sub.add_parser("prune", help="delete artifacts: a named stage, partial builds, or broken ones")
    pr.add_argument("--stage", action="append", default=[], help="delete every artifact of this stage (repeatable)")
    pr.add_argument("--partial", action="store_true", help="delete interrupted builds (*.partial; their resume checkpoints go too)")
    pr.add_argument("--broken", action="store_true", help="delete folders whose manifest is missing or does not match")
    pr.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    args = p.parse_args(argv)
    rows = inventory(args.cache)
    if args.cmd == "info":
        if not rows:
            print(f"{args.cache}: empty")
            return 0
        by_stage: dict[str, list[dict]] = {}
        for r in rows:
            by_stage.setdefault(r["stage"], []).append(r)
        for stage, rs in by_stage.items():
            print(f"{stage}: {len(rs)} artifact(s), {_human(sum(r['bytes'] for r in rs))}")
            for r in rs:
                print(f"  {r['key']:<26} {r['state']:<8} {_human(r['bytes']):>9}  {r['what']}")
        print(f"total {_human(sum(r['bytes'] for r in rows))} in {args.cache}")
        return 0
    if not (args.stage or args.partial or args.broken):
        print("error: prune needs --stage NAME, --partial or --broken (see --help)", file=sys.stderr)
        return 2
    known = {r["stage"] for r in rows}
    for s in args.stage:
        if s not in known:
            print(f"error: no stage {s!r} in {args.cache}; it has {sorted(known)}", file=sys.stderr)
            return 2
    doomed = [r for r in rows if r["stage"] in args.stage or (args.partial and r["state"] == "partial")
              or (args.broken and r["state"] == "broken")]
    for r in doomed:
        print(f"{'would delete' if args.dry_run else 'deleting'} {r['stage']}/{r['key']} ({_human(r['bytes'])})")
        if not args.dry_run:
            shutil.rmtree(Path(args.cache) / r["stage"] / r["key"])
    print(f"{'would free' if args.dry_run else 'freed'} {_human(sum(r['bytes'] for r in doomed))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
