"""Documents and their deterministic train / validation / analysis split.

The embedded default corpus is the source of the running interpreter's standard library: real Python
code with English docstrings and comments, about 30 MB, on every machine that runs splitkit.
A document's split is decided by a hash of its name and ``split_seed`` alone, so adding or removing
other documents never moves it.

Analysis sets larger than a corpus's analysis split continue into held-out text that every machine
running splitkit has as well: the Python sources of installed packages (splitkit's own dependencies
by default, about 145 MB or 40M tokens), read by :func:`load_package_documents`.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .config import CorpusConfig

SPLITS = ("train", "val", "analysis")


class CorpusError(ValueError):
    """The corpus cannot be read; the message says what to fix."""


@dataclass
class Document:
    name: str
    text: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read_text_file(p: Path) -> str | None:
    data = p.read_bytes()
    if b"\x00" in data[:4096]:
        return None  # binary
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _iter_folder(root: Path, pattern: str, skip_site_packages: bool):
    for p in sorted(root.glob(pattern)):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if skip_site_packages and ("site-packages" in rel or "dist-packages" in rel):
            continue
        text = _read_text_file(p)
        if text:
            yield Document(rel, text)


def load_documents(cfg: CorpusConfig) -> list[Document]:
    """Read the corpus named by ``cfg`` into documents (sorted by name, so order is stable)."""
    if cfg.path is None:
        docs = list(_iter_folder(stdlib_root(), cfg.glob, skip_site_packages=True))
        source = f"standard library at {stdlib_root()}"
    else:
        path = Path(cfg.path).expanduser()
        source = str(path)
        if not path.exists():
            raise CorpusError(f"--corpus {path}: no such file or folder")
        if path.is_dir():
            docs = list(_iter_folder(path, cfg.glob, skip_site_packages=False))
        elif path.suffix == ".jsonl":
            docs = _read_jsonl(path, cfg.text_column)
        elif path.suffix == ".parquet":
            docs = _read_parquet(path, cfg.text_column)
        else:
            text = _read_text_file(path)
            if text is None:
                raise CorpusError(f"--corpus {path}: not a UTF-8 text file (give text, a folder, .jsonl or .parquet)")
            docs = _split_text_file(path.name, text)
    docs = [d for d in docs if d.text.strip()]
    if cfg.max_docs is not None:
        # a spread-out subset, not the first files alphabetically, so small presets see varied text
        step = max(1, len(docs) // cfg.max_docs)
        docs = docs[::step][: cfg.max_docs]
    if not docs:
        raise CorpusError(f"corpus {source}: no non-empty text documents found (glob {cfg.glob!r})")
    return docs


def _split_text_file(name: str, text: str, target_chars: int = 20_000) -> list[Document]:
    """One big text file becomes documents at blank lines, about ``target_chars`` each, so it can be split."""
    out, buf, size = [], [], 0
    for para in text.split("\n\n"):
        buf.append(para)
        size += len(para) + 2
        if size >= target_chars:
            out.append(Document(f"{name}#{len(out)}", "\n\n".join(buf)))
            buf, size = [], 0
    if buf:
        out.append(Document(f"{name}#{len(out)}", "\n\n".join(buf)))
    return out


def _read_jsonl(path: Path, column: str) -> list[Document]:
    docs = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise CorpusError(f"--corpus {path}: line {i + 1} is not valid JSON") from None
            if not isinstance(row, dict) or column not in row:
                raise CorpusError(f"--corpus {path}: line {i + 1} has no {column!r} field (set --text-column)")
            text = row[column]
            if not isinstance(text, str):
                raise CorpusError(f"--corpus {path}: line {i + 1}: {column!r} is {type(text).__name__}, not a string "
                                  "(store the document's text as a JSON string, or set --text-column)")
            docs.append(Document(f"{path.name}:{i}", text))
    return docs


def _read_parquet(path: Path, column: str) -> list[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for bad files; its messages run to many lines
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorpusError(f"--corpus {path}: not a readable Parquet file ({first})") from None
    if column not in schema.names:
        raise CorpusError(f"--corpus {path}: no column {column!r}; it has {schema.names[:8]} (set --text-column)")
    if not (pa.types.is_string(schema.field(column).type) or pa.types.is_large_string(schema.field(column).type)):
        raise CorpusError(f"--corpus {path}: column {column!r} holds {schema.field(column).type}, not text "
                          "(set --text-column to a string column)")
    table = pq.read_table(path, columns=[column])
    return [Document(f"{path.name}:{i}", t) for i, t in enumerate(table.column(column).to_pylist()) if t]


def package_root(name: str) -> Path | None:
    """Folder of the installed top-level package ``name`` (found without importing it), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_version(name: str) -> str | None:
    """Version of the distribution that provides top-level package ``name`` (e.g. sklearn -> scikit-learn)."""
    import importlib.metadata as md

    for dist in md.packages_distributions().get(name, [name]):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def load_package_documents(packages: tuple[str, ...], exclude: set[str] = frozenset(),
                           order_seed: int = 0) -> tuple[list[Document], dict]:
    """The ``.py`` sources of installed ``packages`` as documents, for analysis sets past the corpus.

    A file whose text equals one in ``exclude`` (sha256 hex digests of texts, e.g. the training
    corpus's documents) or an earlier file (vendored copies) is dropped, so no text the language
    models trained on comes back as "held out". Documents are ordered by a seeded hash of their name,
    so any prefix of the stream is a mixed sample of all the packages, not the first one's files.

    Returns the documents and ``{package: {"version", "root", "n_docs", "n_chars"}}``; a package
    that is not installed is listed with ``root: None`` and contributes nothing.
    """
    seen = set(exclude)
    docs, info = [], {}
    for name in packages:
        root = package_root(name)
        info[name] = {"version": package_version(name), "root": None if root is None else str(root),
                      "n_docs": 0, "n_chars": 0}
        if root is None:
            continue
        for d in _iter_folder(root, "**/*.py", skip_site_packages=False):
            h = text_digest(d.text)
            if h in seen or not d.text.strip():
                continue
            seen.add(h)
            docs.append(Document(f"{name}/{d.name}", d.text))
            info[name]["n_docs"] += 1
            info[name]["n_chars"] += len(d.text)
    docs.sort(key=lambda d: hashlib.sha256(f"{order_seed}:{d.name}".encode()).digest())
    return docs, info


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def split_of(name: str, fractions: tuple[float, float, float], seed: int) -> str:
    """Deterministic split for a document name: a hash mapped to [0, 1)."""
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "analysis"


def split_documents(docs: list[Document], cfg: CorpusConfig) -> dict[str, list[Document]]:
    out = {s: [] for s in SPLITS}
    for d in docs:
        out[split_of(d.name, cfg.fractions, cfg.split_seed)].append(d)
    for s in SPLITS:
        if not out[s]:
            raise CorpusError(f"corpus split {s!r} is empty ({len(docs)} documents); use a larger corpus or other fractions")
    return out


def corpus_manifest(splits: dict[str, list[Document]], cfg: CorpusConfig) -> dict:
    """Names, sizes and a content hash per split: enough to tell whether two runs saw the same text."""
    man = {"config": cfg.to_dict(), "source": cfg.path or f"stdlib:{stdlib_root()}", "splits": {}}
    for s, docs in splits.items():
        h = hashlib.sha256()
        for d in docs:
            h.update(d.name.encode() + b"\0" + d.text.encode() + b"\0")
        man["splits"][s] = {
            "n_docs": len(docs),
            "n_chars": sum(len(d.text) for d in docs),
            "sha256": h.hexdigest(),
            "docs": [d.name for d in docs],
        }
    return man
