"""Cache faults a reliability check found: each is detected, never used silently."""

import json
import os

import pytest

import splitkit.cache as C
from splitkit.cache import Cache, CacheError, check_manifest


def _sealed(tmp_path):
    art = Cache(tmp_path).artifact("x", {"a": 1})
    work = art.begin()
    (work / "w.bin").write_bytes(bytes(range(256)) * 64)
    art.seal()
    C._VERIFIED.clear()  # as in a new process
    return art


def test_tamper_with_size_and_mtime_restored_is_detected(tmp_path):
    art = _sealed(tmp_path)
    p = art.path / "w.bin"
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[7] ^= 0x80  # a sign flip, same size
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back as a user can
    assert p.stat().st_mtime_ns == st.st_mtime_ns and p.stat().st_size == st.st_size
    with pytest.raises(CacheError, match="checksum"):
        check_manifest(art.path)


def test_force_verify_rehashes_despite_the_stamp(tmp_path, monkeypatch):
    art = _sealed(tmp_path)
    calls = []
    real = C.sha256_file
    monkeypatch.setattr(C, "sha256_file", lambda p: calls.append(p) or real(p))
    check_manifest(art.path)
    assert calls == []
    monkeypatch.setattr(C, "FORCE_VERIFY", True)
    check_manifest(art.path)
    assert len(calls) == 2  # w.bin and spec.json


@pytest.mark.parametrize("manifest", [[], {"files": []}, {"files": {}}, {"files": {"w.bin": 5}}, "x"])
def test_malformed_manifests_are_partial(tmp_path, manifest):
    art = _sealed(tmp_path)
    (art.path / "w.bin").write_bytes(b"trunc")  # truncated file under a manifest that vouches for nothing
    (art.path / C.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="manifest"):
        check_manifest(art.path)
    assert not art.is_complete()


def test_file_outside_the_manifest_is_not_trusted(tmp_path):
    art = _sealed(tmp_path)
    (art.path / "extra.npy").write_bytes(b"x")
    with pytest.raises(CacheError, match="not in the manifest"):
        check_manifest(art.path)


def test_cache_info_and_prune(tmp_path, capsys):
    c = Cache(tmp_path)
    a = c.artifact("lm", {"lm": {"n_tokens": 5}, "seed": 3})
    (a.begin() / "w.bin").write_bytes(b"x" * 2048)
    a.seal()
    b = c.artifact("acts", {"split": "train", "n_tokens": 7})
    (b.begin() / "s.npy").write_bytes(b"y" * 4096)  # left partial: an interrupted build
    rows = {(r["stage"], r["state"]): r for r in C.inventory(tmp_path)}
    assert rows[("lm", "complete")]["what"] == "lm.n_tokens=5, seed=3"
    assert rows[("acts", "partial")]["bytes"] >= 4096
    assert C.main(["--cache", str(tmp_path), "info"]) == 0
    out = capsys.readouterr().out
    assert "lm: 1 artifact(s)" in out and "partial" in out
    assert C.main(["--cache", str(tmp_path), "prune", "--partial", "--dry-run"]) == 0
    assert b.partial_path.exists()
    assert C.main(["--cache", str(tmp_path), "prune", "--partial"]) == 0
    assert not b.partial_path.exists() and a.path.exists()
    assert C.main(["--cache", str(tmp_path), "prune", "--stage", "nope"]) == 2
    assert "no stage 'nope'" in capsys.readouterr().err
    assert C.main(["--cache", str(tmp_path), "prune", "--stage", "lm"]) == 0
    assert not a.path.exists()


def test_damaged_features_file_under_a_rebuilt_manifest_is_one_line(tmp_path):
    import numpy as np
    import scipy.sparse as sp

    from splitkit import pipeline as P

    art = Cache(tmp_path).artifact("features", {"n": 4})
    work = art.begin()
    sp.save_npz(work / "features.npz", sp.csr_matrix(np.eye(4, dtype=np.float32)))
    np.save(work / "counts.npy", np.ones(4))
    art.seal()
    fs = P.FeatureSet(art.path, art.key)
    assert fs.acts().nnz == 4
    (art.path / "features.npz").write_bytes(b"PK\x03\x04 not a zip any more")
    C.write_manifest(art.path)  # a manifest rebuilt by hand now vouches for the damage
    with pytest.raises(P.PipelineError, match=r"features.npz is unreadable .*delete .* and the stage is rebuilt") as e:
        fs.acts()
    assert "\n" not in str(e.value)


def test_atomic_writes_get_the_mode_of_a_plain_open_and_leave_nothing_on_failure(tmp_path):
    import networkx as nx
    import pandas as pd

    from splitkit.report.common import write_table
    from splitkit.report.graphs import write_gexf

    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this process's umask
    want = plain.stat().st_mode & 0o777
    C.atomic_write_json(tmp_path / "a.json", {"a": 1})
    write_gexf(nx.path_graph(3), tmp_path / "g.gexf")
    write_table(pd.DataFrame({"a": [1, 2]}), tmp_path / "t", csv=True)
    for name in ("a.json", "g.gexf", "t.parquet", "t.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name  # mkstemp alone gives 0600
    with pytest.raises(RuntimeError):
        with C.atomic_path(tmp_path / "b.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert not (tmp_path / "b.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "g.gexf", "plain.txt", "t.csv", "t.parquet"]


_BUILDER = """
import sys, time
from splitkit.cache import Cache
art = Cache(sys.argv[1]).artifact("x", {"a": 1})
art.lock()
work = art.begin(resume=False)
print("locked", flush=True)
time.sleep(1.0)
(work / "w.bin").write_bytes(b"built by the other process")
art.seal()
"""


def test_a_second_process_waits_for_the_build_instead_of_racing_it(tmp_path, capsys):
    """Two studies on one cache: the later one waits for the artifact the first is building, then
    uses it; before build locks it started its own build in the same work folder and one of them
    failed with FileNotFoundError when the other sealed."""
    import subprocess
    import sys

    from splitkit.pipeline.core import _claim

    child = subprocess.Popen([sys.executable, "-c", _BUILDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        art = Cache(tmp_path).artifact("x", {"a": 1})
        assert not art.is_complete()
        assert _claim(art) is True  # waited, then found it complete: nothing for this process to build
        assert (art.path / "w.bin").read_bytes() == b"built by the other process"
        assert "waiting: another process is building x/" in capsys.readouterr().err
    finally:
        child.wait(timeout=30)
    assert child.returncode == 0


def test_claim_holds_the_lock_until_seal_and_is_reentrant(tmp_path):
    from splitkit.pipeline.core import _claim

    art = Cache(tmp_path).artifact("x", {"a": 2})
    assert _claim(art) is False and str(art.path) in C._HELD_LOCKS
    assert _claim(art) is False  # the same process again: no deadlock on its own lock
    work = art.begin(resume=False)
    (work / "w.bin").write_bytes(b"1")
    art.seal()
    assert str(art.path) not in C._HELD_LOCKS
    assert _claim(art) is True
