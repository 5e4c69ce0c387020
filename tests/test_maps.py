"""Joint decoder map: planted direction clusters are found pure; settings, determinism, labels."""

import numpy as np
import pytest
import scipy.sparse as sp

from splitkit.analyses import maps as M
from splitkit.analyses import splitting as S


def planted_decoders(seed=0, n_families=8, d=48, sizes=(32, 64, 128), spread=0.25):
    """Dictionaries of several sizes whose decoder rows lie near one of ``n_families`` directions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_families, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    decoders, fams = {}, {}
    for s in sizes:
        fam = rng.integers(0, n_families, s)
        noise = rng.standard_normal((s, d))
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        decoders[("A", s)] = (centres[fam] + spread * noise).astype(np.float32)
        fams[s] = fam
    return decoders, fams


@pytest.fixture(scope="module")
def planted_map():
    decoders, fams = planted_decoders()
    df = M.joint_map(decoders, seed=0)
    return decoders, fams, df


def test_planted_direction_clusters_are_pure(planted_map):
    _, fams, df = planted_map
    labels = np.concatenate([fams[s] for s in sorted(fams)])
    res = M.cluster_purity(df["cluster"].to_numpy(), labels)
    assert res["purity"] >= 0.95 and res["ami"] >= 0.8 and res["noise_share"] <= 0.2, res
    shuffled = M.cluster_purity(df["cluster"].to_numpy(), np.random.default_rng(0).permutation(labels))
    assert shuffled["purity"] < 0.5  # the figure is not high by construction
    # points of one family sit together on the 2-D map too: nearest neighbour shares the family
    xy = df[["x", "y"]].to_numpy()
    dist = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    assert np.mean(labels[dist.argmin(1)] == labels) >= 0.95


def test_map_rows_settings_and_ids(planted_map):
    decoders, _, df = planted_map
    assert len(df) == sum(len(W) for W in decoders.values())
    assert df["node"].iloc[0] == "A/32/0" and df["node"].iloc[-1] == "A/128/127"
    assert df.attrs["min_dist"] == 0.01 and df.attrs["n_neighbors"] == 15 and df.attrs["min_cluster_size"] == 3
    assert df.attrs["metric"] == "cosine" and df.attrs["cluster_dims"] == 10
    assert M.paper_min_dist(2) == 0.05 and M.paper_min_dist(3) == 0.01


def test_map_is_seeded():
    decoders, _ = planted_decoders(seed=1, sizes=(40, 80))
    a = M.joint_map(decoders, seed=3, cluster_dims=0)
    b = M.joint_map(decoders, seed=3, cluster_dims=0)
    assert a.attrs["min_dist"] == 0.05
    assert np.array_equal(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy())
    assert np.array_equal(a["cluster"].to_numpy(), b["cluster"].to_numpy())


def test_family_labels_follow_the_forest_and_its_twins():
    rng = np.random.default_rng(0)
    leaf = sp.random(3000, 6, density=0.05, random_state=rng, format="csr", dtype=np.float32)
    parent = sp.csr_matrix(leaf @ np.kron(np.eye(3), np.ones((2, 1))).astype(np.float32))  # 3 parents of 2
    acts = {3: parent, 12: sp.hstack([leaf, leaf]).tocsr()}  # every leaf twice
    forest, _ = S.splitting_forest(acts, twins={12: np.r_[np.arange(6), np.arange(6)]})
    import pandas as pd

    df = pd.DataFrame({"run": ["A"] * 16, "size": [3] * 3 + [12] * 12 + [99],
                       "feature": list(range(3)) + list(range(12)) + [0]})
    lab = M.family_labels(df, forest)
    fam_of_parent = lab[:3]
    assert len(set(fam_of_parent)) == 3
    assert lab[3 + 6 + 4] == lab[3 + 4] == fam_of_parent[2]  # a twin gets its cluster's family
    assert lab[-1] == -1


def test_map_validation():
    with pytest.raises(ValueError, match="zero rows"):
        M.joint_map({("A", 20): np.zeros((20, 4))})
    with pytest.raises(ValueError, match="too few"):
        M.joint_map({("A", 5): np.ones((5, 4))})
    with pytest.raises(ValueError, match="one length"):
        M.cluster_purity(np.zeros(3), np.zeros(4))


def test_cluster_purity_by_hand():
    # cluster 0 = {a, a, b}, cluster 1 = {b}, cluster 2 = {a}; one noise point; one unlabelled point
    res = M.cluster_purity(np.array([0, 0, 0, 1, 2, -1, 1]), np.array([0, 0, 1, 1, 0, 0, -1]))
    assert res["purity"] == pytest.approx(4 / 5) and res["n_points"] == 5 and res["n_clusters"] == 3
    assert res["noise_share"] == pytest.approx(1 / 7)
    # one family cut into clusters is still pure (purity does not punish splitting; ami does)
    split = M.cluster_purity(np.array([0, 0, 0, 1, 2]), np.zeros(5, int))
    assert split["purity"] == 1.0


def test_cluster_purity_by_hand_and_past_the_ami_limit(monkeypatch):
    # clusters 0: labels a a b; 1: b b; 2: c; noise and unlabelled points left out
    clusters = np.array([0, 0, 0, 1, 1, 2, -1, 2])
    labels = np.array([5, 5, 7, 7, 7, 9, 5, -1])
    res = M.cluster_purity(clusters, labels)
    assert res["purity"] == pytest.approx(5 / 6) and res["n_clusters"] == 3 and res["n_points"] == 6
    assert res["noise_share"] == pytest.approx(1 / 8)
    assert 0 < res["nmi"] < 1 and np.isfinite(res["ami"])
    monkeypatch.setattr(M, "AMI_MAX_PAIRS", 8)  # 3 clusters x 3 labels = 9 cells
    big = M.cluster_purity(clusters, labels)
    assert np.isnan(big["ami"]) and "ami_skipped" in big
    assert big["purity"] == res["purity"] and big["nmi"] == res["nmi"]


def test_joint_map_is_cached_and_read_back_equal(tmp_path):
    import pandas as pd

    from splitkit import pipeline as P
    from splitkit.config import get_preset

    cfg = get_preset("smoke").replace(cache_dir=str(tmp_path / "cache"))
    calls = []

    def build():
        calls.append(1)
        df = pd.DataFrame({"node": ["A/4/0", "A/4/1"], "run": ["A", "A"], "size": [4, 4], "feature": [0, 1],
                           "x": [0.5, -1.25], "y": [2.0, 3.0], "cluster": [0, -1]})
        df.attrs.update(metric="cosine", seconds={"hdbscan": 1.5})
        return df

    keys, settings = {"A": "fam-a"}, {"sizes": [4], "n_neighbors": 15}
    first = P.get_joint_map(cfg, keys, settings, build, progress=False)
    again = P.get_joint_map(cfg, keys, settings, build, progress=False)
    assert calls == [1]  # the second call read the cache
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs == first.attrs
    P.get_joint_map(cfg, keys, {**settings, "n_neighbors": 5}, build, progress=False)
    P.get_joint_map(cfg, {"A": "fam-other"}, settings, build, progress=False)
    assert calls == [1, 1, 1]  # other settings or other dictionaries: built again
