"""The top-families Gephi file stays small enough to open at once: whole families under a node cap."""

import pandas as pd

from splitkit.report.splitting import _top_families


def _nodes():
    rows = []
    for run in ("A", "B"):
        # families numbered by decreasing size, as the forest numbers them: 6, 3 and 2 nodes
        for fam, n in ((0, 6), (1, 3), (2, 2)):
            for i in range(n):
                rows.append({"run": run, "family": fam, "size": 512 * 2 ** i, "feature": 10 * fam + i})
    return pd.DataFrame(rows)


def test_whole_families_are_kept_while_they_fit_the_cap():
    nd = _nodes()
    assert len(_top_families(nd, 3, None)) == 22 and len(_top_families(nd, 2, None)) == 18
    # 18 nodes for two runs: 9 a run, so families 0 and 1 (6 + 3) and not family 2
    got = _top_families(nd, 3, 18)
    assert sorted(got.groupby("run")["family"].unique().map(list).sum()) == [0, 0, 1, 1]
    assert len(got) == 18


def test_a_family_larger_than_the_cap_is_cut_to_its_smallest_sizes():
    got = _top_families(_nodes(), 3, 8)  # 4 a run; the largest family alone has 6
    for run in ("A", "B"):
        x = got[got["run"] == run]
        assert (x["family"] == 0).all() and sorted(x["size"]) == [512, 1024, 2048, 4096]
