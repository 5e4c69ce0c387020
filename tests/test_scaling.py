"""The universality-scaling study: planted sharing recovered, chance near 0, the grid end to end."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from splitkit.analyses.universality import (counted_mask, density_bins, density_curve, matched_figures,
                                            universality_figures)
from splitkit.config import ConfigError, ScalingConfig, parse_counts
from splitkit.sae import SAEConfig, SparseAutoencoder


def _sae_from_directions(D: np.ndarray, threshold: float) -> SparseAutoencoder:
    """A ReLU dictionary whose encoder reads each direction of ``D [n, d]`` above ``threshold``."""
    n, d = D.shape
    sae = SparseAutoencoder(SAEConfig(d_in=d, n_features=n))
    with torch.no_grad():
        sae.W_dec.copy_(torch.from_numpy(D))
        sae.W_enc.copy_(torch.from_numpy(D.T.copy()))
        sae.b_enc.fill_(-threshold)
        sae.b_dec.zero_()
    return sae


@pytest.mark.parametrize("shared", [0.25, 0.6])
def test_planted_shared_fraction_is_recovered(shared):
    """Two dictionaries sharing a known fraction of directions: that fraction matches above 0.7."""
    rng = np.random.default_rng(0)
    d, n, n_tok = 96, 160, 40_000
    truth = rng.standard_normal((n, d)).astype(np.float32)
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    # sparse superposed codes with power-law frequencies, as in a real MLP
    freq = 0.04 * (np.arange(1, n + 1) ** -0.6)
    codes = (rng.random((n_tok, n)) < freq) * rng.uniform(1.0, 3.0, (n_tok, n))
    x = torch.from_numpy((codes @ truth).astype(np.float32))  # [n_tok, d]
    n_shared = int(round(shared * n))
    other = rng.standard_normal((n - n_shared, d)).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    perm = rng.permutation(n)  # B lists its shared directions in another order
    D_b = np.concatenate([truth[perm[:n_shared]], other])
    acts = []
    for D in (truth, D_b):
        f = _sae_from_directions(D, threshold=0.6).encode(x).detach().numpy()
        acts.append(sp.csr_matrix(f))
    fig = universality_figures(acts[0], acts[1], ultralow_density=1e-4)
    frac = fig["paper"]["frac_gt_0.7"]
    assert abs(frac - shared) < 0.06, (frac, shared)
    # and the units that match are exactly the shared ones
    matched = np.flatnonzero(fig["corr"] > 0.7)
    assert set(matched) <= set(perm[:n_shared].tolist())
    # chance: B's tokens shuffled
    assert np.nanmedian(fig["chance"]) < 0.05
    # the grid's one-pass figures are these, bit for bit, with the match table beside them
    fig2, table, matrix = matched_figures(acts[0], acts[1], ultralow_density=1e-4)
    for key in ("corr", "chance", "counts"):
        np.testing.assert_array_equal(fig2[key], fig[key])
    assert fig2["paper"] == fig["paper"] and fig2["n_dead"] == fig["n_dead"]
    np.testing.assert_array_equal(table["corr"].to_numpy(), fig["corr"])
    assert matrix is not None and matrix.C.shape == (n, n)


def test_matched_figures_above_the_dense_limit(monkeypatch):
    """Past the Hungarian limit no matrix is kept, and the figures are still universality_figures'."""
    import splitkit.analyses.universality.figures as U

    rng = np.random.default_rng(4)
    fire = rng.random((3000, 40)) < 0.05
    a = sp.csr_matrix((fire * rng.exponential(1.0, fire.shape)).astype(np.float32))
    b = sp.csr_matrix((a.toarray() * np.exp(rng.normal(0, 0.2, a.shape))).astype(np.float32)[:, rng.permutation(40)])
    want = universality_figures(a, b, ultralow_density=1e-4)
    monkeypatch.setattr(U, "DENSE_ASSIGNMENT_LIMIT", 100)
    fig, table, matrix = matched_figures(a, b, ultralow_density=1e-4)
    assert matrix is None and table.attrs["assignment"] == "topk"
    np.testing.assert_array_equal(fig["corr"], want["corr"])
    assert fig["paper"] == want["paper"] and fig["paper"]["median"] > 0.9


def test_paper_exclusion_counts():
    counts = np.array([0, 1, 9, 10, 500])
    assert counted_mask(counts, 1_000_000, 1e-5).tolist() == [False, False, False, True, True]
    assert counted_mask(counts, 1_000_000, 0.0, min_count=10).tolist() == [False, False, False, True, True]


def test_one_density_bin_rule_for_the_study_and_the_grid():
    # densities 1 in 10M (bin -7), 5 in 10M (log10 -6.3: bin -6.5), 1e-3 twice, a dead unit, a NaN match
    density = np.array([1e-7, 5e-7, 1e-3, 1.2e-3, 0.0, 0.5])
    corr = np.array([0.1, 0.2, 0.8, 0.6, 0.9, np.nan])
    bins = density_bins(density, corr)
    assert bins["log10_density_lo"].tolist() == [-7.0, -6.5, -3.0]
    assert bins["log10_density_hi"].tolist() == [-6.5, -6.0, -2.5]
    assert bins["n"].tolist() == [1, 1, 2]
    assert bins["median_corr"].tolist() == pytest.approx([0.1, 0.2, 0.7])
    curve = density_curve(density, corr)
    assert [r["log10_density_lo"] for r in curve] == bins["log10_density_lo"].tolist()
    assert [r["median_corr"] for r in curve] == bins["median_corr"].tolist() and "log10_density_hi" not in curve[0]


def test_parse_counts_and_grid_validation():
    assert parse_counts("500k, 1M,2m,4000000", "--budgets") == (500_000, 1_000_000, 2_000_000, 4_000_000)
    for bad in ("", "1M,x", "-5", "0.5"):
        with pytest.raises(ConfigError):
            parse_counts(bad, "--budgets")
    with pytest.raises(ConfigError, match="increasing"):
        ScalingConfig(budgets=(2_000, 1_000))
    sc = ScalingConfig(budgets=(1_000, 2_000), paper_budgets=(500, 1_000))
    assert sc.budgets_for("paper") == (500, 1_000) and sc.budgets_for("l1_decnorm") == (1_000, 2_000)
    assert ScalingConfig(paper_budgets=None).budgets_for("paper") == ScalingConfig().budgets
    with pytest.raises(ConfigError, match="unknown recipe"):
        ScalingConfig(recipes=("magic",))
    # each penalised recipe gets its own lambda: the section's where it names one, else the recipe's
    sc = ScalingConfig(paper_l1_coeff=1e-4, l1_decnorm_coeff=2e-4, l1_log_coeff=3e-4)
    assert [sc.l1_coeff_for(r) for r in ("paper", "l1_decnorm", "l1_log")] == [1e-4, 2e-4, 3e-4]
    assert sc.l1_coeff_for("matryoshka") == 1.8e-3
    with pytest.raises(ConfigError, match="no lambda"):
        sc.l1_coeff_for("topk")


def test_fixed_l0_arms_and_their_configs(smoke_cfg):
    from splitkit import pipeline as P
    from splitkit.analyses.scaling import recipe_config

    sc = ScalingConfig(recipes=("l1_log", "topk"), target_l0s=(8, 16))
    # every recipe at its lambda first, then each penalised one per target (topk's L0 is its k)
    assert sc.arms() == [("l1_log", "l1_log", None), ("topk", "topk", None),
                         ("l1_log@L0=8", "l1_log", 8.0), ("l1_log@L0=16", "l1_log", 16.0)]
    assert ScalingConfig(recipes=("l1_log", "paper")).arms() == [("l1_log", "l1_log", None), ("paper", "paper", None)]
    for bad in ((16, 8), (0,), (8, 8), (True,), ("8",)):
        with pytest.raises(ConfigError, match="target_l0s"):
            ScalingConfig(target_l0s=bad)
    with pytest.raises(ConfigError, match="gain"):
        ScalingConfig(target_l0_gain=0)
    base = recipe_config(smoke_cfg, sc, "l1_log")
    arm = recipe_config(smoke_cfg, sc, "l1_log", target_l0=16.0)
    # the fixed-lambda arm keys its families as before the arms existed; a target keys its own
    assert "target_l0" not in base.dict.key_dict() and "l0_gain" not in base.dict.key_dict()
    assert arm.dict.key_dict()["target_l0"] == 16.0 and arm.dict.key_dict()["l0_gain"] == sc.target_l0_gain
    assert arm.dict.lam == base.dict.lam == sc.l1_coeff_for("l1_log")  # lambda starts where the fixed arm's is
    tc = P.trainer_config(arm)
    assert tc.target_l0 == 16.0 and tc.l0_gain == sc.target_l0_gain
    assert P.trainer_config(base).target_l0 is None and P.trainer_config(base).l0_gain == 0.02


def test_fixed_lambda_false_trains_the_l0_arms_alone():
    sc = ScalingConfig(recipes=("l1_log", "topk"), target_l0s=(8, 16), fixed_lambda=False)
    assert sc.arms() == [("l1_log@L0=8", "l1_log", 8.0), ("l1_log@L0=16", "l1_log", 16.0)]
    with pytest.raises(ConfigError, match="target_l0s"):
        ScalingConfig(fixed_lambda=False)
    with pytest.raises(ConfigError, match="no L0 target"):
        ScalingConfig(recipes=("topk",), target_l0s=(8,), fixed_lambda=False)


def _grid_rows(recipe, target, medians, rev="0123456789", n=64):
    """Flat grid rows of one arm and size at budgets 1M, 2M, 4M with the given feature medians."""
    return pd.DataFrame([{"id": f"{recipe}{'' if target is None else f'@L0={target:g}'}-n{n}-t{t}-a1000",
                          "key": f"{recipe}-{target}-{n}-{t}-{rev}", "recipe": recipe if target is None
                          else f"{recipe}@L0={target:g}", "base_recipe": None if target is None else recipe,
                          "target_l0": np.nan if target is None else float(target), "n_features": n,
                          "sae_tokens": t, "sae_tokens_budget": t, "analysis_tokens": 1000,
                          "features_paper_median": m, "neurons_median": 0.5, "l0_a": 10.0, "l0_b": 12.0,
                          "git_revision": rev}
                         for t, m in zip((1_000_000, 2_000_000, 4_000_000), medians)])


def test_table_json_keeps_rows_this_run_did_not_measure(tmp_path):
    from splitkit.report.scaling import _table_rows, earlier_rows

    table = tmp_path / "t.json"
    assert earlier_rows(table, _grid_rows("l1_decnorm", 16, (0.5, 0.5, 0.5))).empty  # no table yet
    old = pd.concat([_grid_rows("l1_decnorm", None, (0.7, 0.6, 0.5), rev="aaaaaaa111"),
                     _grid_rows("l1_decnorm", 16, (0.1, 0.1, 0.1))], ignore_index=True)
    table.write_text(json.dumps({"rows": _table_rows(pd.DataFrame(), old)}))
    # this run re-measures the fixed-L0 points (same keys) with new figures and adds a size
    new = pd.concat([_grid_rows("l1_decnorm", 16, (0.4, 0.4, 0.4)),
                     _grid_rows("l1_decnorm", 16, (0.3, 0.3, 0.3), n=128)], ignore_index=True)
    earlier = earlier_rows(table, new)
    assert list(earlier["features_paper_median"]) == [0.7, 0.6, 0.5]  # only the rows it did not measure
    rows = _table_rows(earlier, new)
    assert len(rows) == 9 and len({r["key"] for r in rows}) == 9
    assert [r["features_paper_median"] for r in rows if r["recipe"] == "l1_decnorm@L0=16" and r["n_features"] == 64] \
        == [0.4, 0.4, 0.4]
    assert all(r["target_l0"] is None for r in rows[:3])  # NaN is written as null
    json.dumps(rows, allow_nan=False)
    table.write_text("{not json")
    with pytest.raises(ConfigError, match="not a grid table"):
        earlier_rows(table, new)


def test_fixed_l0_figure_takes_missing_fixed_lambda_lines_from_the_table():
    from splitkit.report.scaling import fig_fixed_l0

    arm = _grid_rows("l1_decnorm", 16, (0.6, 0.6, 0.6))
    earlier = pd.concat([_grid_rows("l1_decnorm", None, (0.7, 0.6, 0.5), rev="abcdef0123"),
                         _grid_rows("paper", None, (0.2, 0.2, 0.2))], ignore_index=True)

    def labels(fig):
        return {line.get_label() for ax in fig.axes for line in ax.get_lines()}

    got = labels(fig_fixed_l0(arm, earlier))
    assert "fixed λ n=64 (table, abcdef0)" in got and "L0 16 n=64" in got
    assert not any(label.startswith("fixed λ") for label in labels(fig_fixed_l0(arm)))
    # a recipe with no fixed-L0 arm is not drawn; a fixed-lambda arm measured in this run wins over the table
    both = pd.concat([arm, _grid_rows("l1_decnorm", None, (0.7, 0.7, 0.7))], ignore_index=True)
    got = labels(fig_fixed_l0(both, earlier))
    assert "fixed λ n=64" in got and not any("table" in label for label in got)


@pytest.mark.heavy
def test_scaling_grid_end_to_end_and_resume(smoke_cfg, tmp_path):
    from studies import universality_scaling as study

    out = tmp_path / "scaling"
    argv = ["--preset", "smoke", "--cache", smoke_cfg.cache_dir, "--out", str(out), "--quiet",
            "--sizes", "64,128", "--budgets", "20k,41k,82k", "--analysis-tokens", "10k,30k"]
    assert study.main(argv) == 0
    df = pd.read_parquet(out / "scaling.parquet")
    # 2 recipes x 2 sizes x 3 budgets x 2 analysis sets
    assert len(df) == 24
    assert set(df["recipe"]) == {"l1_decnorm", "paper"}
    assert sorted(df["analysis_tokens"].unique()) == [10_000, 30_000]
    assert df["sae_tokens"].nunique() == 3 and df["sae_tokens"].min() < df["sae_tokens"].max()
    for col in ("features_paper_median", "features_all_alive_median", "neurons_median", "chance_paper_median",
                "loss_recovered_zero_a", "loss_recovered_mean_a", "fvu_a", "l0_a", "dead_frac_a",
                "ultralow_frac_a", "features_paper_frac_gt_0.7", "family_train_s_to_budget"):
        assert col in df.columns, col
    # real data: chance is near 0, real matches far above it; every metric is a number in range
    assert (df["chance_paper_median"].abs() < 0.1).all()
    assert (df["features_all_alive_median"] > df["chance_all_alive_median"] + 0.1).all()
    assert df["loss_recovered_zero_a"].between(0, 1.05).all()
    # every point carries its copy figures: the paper's many-to-one median is that of the table, the
    # one-to-one and de-duplicated ones sit beside it; twin shares are shares
    assert np.allclose(df["many_to_one_median"], df["features_paper_median"], atol=1e-6)
    assert (df["one_to_one_median"] <= df["many_to_one_median"] + 1e-9).all()
    for col in ("twin_share_act_0.9_a", "twin_share_act_0.9_b", "twin_share_dec_0.9_a", "mutual_share"):
        assert df[col].between(0, 1).all(), col
    assert (df["n_clusters_act_0.9_a"] <= df["n_features"]).all() and (df["dedup_n"] <= df["features_paper_n"]).all()
    # budgets are snapshots of one run: training time grows with the budget within each family
    for _, g in df[df["analysis_tokens"] == 30_000].groupby(["recipe", "n_features"]):
        g = g.sort_values("sae_tokens")
        assert g["sae_tokens"].tolist() == [19 * 1024, 40 * 1024, 80 * 1024]
        assert g["family_train_s_to_budget"].is_monotonic_increasing
    s = json.loads((out / "summary.json").read_text())
    assert s["provenance"]["git_revision"] and len(s["headline"]) == 4
    assert all("one_to_one_median" in h and "twin_share_act_0.9_a" in h for h in s["headline"])
    assert "de-duplicated" in (out / "report.md").read_text()
    for f in ("report.md", "universality_vs_sae_tokens.png", "dead_and_loss_vs_sae_tokens.png",
              "universality_vs_analysis_tokens.png", "corr_vs_density.png"):
        assert (out / f).is_file(), f
    # every point is a cached record (scaling_point stage), found by the key the table gives it
    def records():
        by_key = {}
        for f in (Path(smoke_cfg.cache_dir) / "scaling_point").glob("*/record.json"):
            row = json.loads(f.read_text())
            by_key[row["key"]] = f.parent
        return {k: by_key[k] for k in df["key"]} if set(df["key"]) <= set(by_key) else by_key

    def stamps_of(folders):
        return {k: (d / "record.json").stat().st_mtime_ns for k, d in folders.items()}

    folders = records()
    assert len(folders) == 24 and all((d / "manifest.json").is_file() for d in folders.values())
    # a second run reuses every finished point: no record is rewritten
    stamps = stamps_of(folders)
    assert study.main(argv) == 0
    assert stamps_of(folders) == stamps
    df2 = pd.read_parquet(out / "scaling.parquet")
    pd.testing.assert_frame_equal(df.drop(columns=["features_s", "matching_s"]),
                                  df2.drop(columns=["features_s", "matching_s"]))
    # --report-only rebuilds the table from the finished points alone
    (out / "scaling.parquet").unlink()
    assert study.main(argv + ["--report-only"]) == 0
    pd.testing.assert_frame_equal(df.drop(columns=["features_s", "matching_s"]),
                                  pd.read_parquet(out / "scaling.parquet").drop(columns=["features_s", "matching_s"]))
    # the decoder-cosine yardstick: a column of every point, one cached record per (recipe, size, budget)
    for col in ("decoder_share", "decoder_share_neurons", "decoder_share_random", "decoder_median_cos"):
        assert df[col].between(-1, 1).all(), col
    assert (df["decoder_threshold"] == 0.7).all() and df["decoder_map_r2"].between(0, 1).all()
    assert (df.groupby(["recipe", "n_features", "sae_tokens"])["decoder_share"].nunique() == 1).all()
    dec = Path(smoke_cfg.cache_dir) / "decoder_point"
    # 12 (recipe, size, budget) combinations here; the shared smoke cache may hold other tests' records
    assert df.groupby(["recipe", "n_features", "sae_tokens"]).ngroups == 12
    assert len(list(dec.glob("*/record.json"))) >= 12
    # points cached before the column existed (no decoder record) still load, and get it without re-measuring
    shutil.rmtree(dec)
    assert study.main(argv + ["--report-only"]) == 0
    old = pd.read_parquet(out / "scaling.parquet")
    assert len(old) == 24 and ("decoder_share" not in old.columns or old["decoder_share"].isna().all())
    stamps = stamps_of(folders)
    assert study.main(argv) == 0
    assert stamps_of(folders) == stamps
    pd.testing.assert_series_equal(pd.read_parquet(out / "scaling.parquet")["decoder_share"], df["decoder_share"])
    # a lost point is recomputed to the same figures
    key_of = dict(zip(df["id"], df["key"]))
    lost = folders[key_of["paper-n128-t41000-a30000"]]
    before = json.loads((lost / "record.json").read_text())
    shutil.rmtree(lost)
    assert study.main(argv) == 0
    after = json.loads((lost / "record.json").read_text())
    assert after["features_paper_median"] == pytest.approx(before["features_paper_median"], abs=1e-9)
    # and with --report-only a lost point stays lost (nothing is measured)
    shutil.rmtree(lost)
    assert study.main(argv + ["--report-only"]) == 0
    assert len(pd.read_parquet(out / "scaling.parquet")) == 23 and not lost.exists()
    # --only measures the matching unfinished points and nothing else
    other = folders[key_of["l1_decnorm-n64-t20000-a10000"]]
    shutil.rmtree(other)
    rest = {k: d for k, d in folders.items() if d not in (lost, other)}
    stamps = stamps_of(rest)
    assert study.main(argv + ["--only", "paper-n128-*-a30000"]) == 0
    assert lost.exists() and not other.exists()
    assert stamps_of(rest) == stamps
    assert len(pd.read_parquet(out / "scaling.parquet")) == 23
    # a point an earlier version kept as <out>/points/<id>.json (same key) is taken in, not measured
    (out / "points").mkdir()
    (out / "points" / "paper-n128-t41000-a30000.json").write_text(json.dumps(before))
    shutil.rmtree(lost)
    assert study.main(argv + ["--report-only"]) == 0
    assert json.loads((lost / "record.json").read_text()) == before
    assert len(pd.read_parquet(out / "scaling.parquet")) == 23


@pytest.mark.heavy
def test_scaling_grid_fixed_l0_arm_end_to_end(smoke_cfg, tmp_path):
    from studies import universality_scaling as study

    out = tmp_path / "scaling_l0"
    argv = ["--preset", "smoke", "--cache", smoke_cfg.cache_dir, "--out", str(out), "--quiet", "--recipes",
            "l1_decnorm", "--sizes", "64", "--budgets", "20k,41k", "--analysis-tokens", "10k", "--target-l0s", "12"]
    assert study.main(argv) == 0
    df = pd.read_parquet(out / "scaling.parquet").set_index("id")
    assert sorted(df.index) == sorted(["l1_decnorm-n64-t20000-a10000", "l1_decnorm-n64-t41000-a10000",
                                       "l1_decnorm@L0=12-n64-t20000-a10000", "l1_decnorm@L0=12-n64-t41000-a10000"])
    arm = df.loc["l1_decnorm@L0=12-n64-t41000-a10000"]
    fixed = df.loc["l1_decnorm-n64-t41000-a10000"]
    assert arm["target_l0"] == 12.0 and arm["base_recipe"] == "l1_decnorm" and np.isnan(fixed["target_l0"])
    # its own family, steered: at the fixed lambda L0 is ~31 here, the arm is pulled toward 12
    assert fixed["l0_a"] > 25 and arm["l0_a"] < 0.75 * fixed["l0_a"]
    assert arm["key"] != fixed["key"]
    s = json.loads((out / "summary.json").read_text())
    assert {h["recipe"] for h in s["headline"]} == {"l1_decnorm", "l1_decnorm@L0=12"}
    assert (out / "universality_vs_sae_tokens_fixed_l0.png").is_file() and "fixed_l0" in s["figures"]
    # the fixed-L0 arm alone (its points cached): the table keeps the fixed-lambda rows it did not measure
    table = tmp_path / "table.json"
    assert study.main(argv + ["--table-json", str(table)]) == 0
    assert study.main(argv + ["--table-json", str(table), "--no-fixed-lambda"]) == 0
    assert sorted(pd.read_parquet(out / "scaling.parquet")["id"]) == [i for i in sorted(df.index) if "@" in i]
    rows = json.loads(table.read_text())["rows"]
    assert sorted(r["id"] for r in rows) == sorted(df.index)
    assert "fixed_l0" in json.loads((out / "summary.json").read_text())["figures"]


def test_scaling_bad_arguments_are_one_line_errors(smoke_cfg, capsys, tmp_path):
    from studies import universality_scaling as study

    for argv, needle in ((["--budgets", "1M,zz"], "--budgets"), (["--recipes", "magic"], "unknown recipe"),
                         (["--analysis-tokens", "900M"], "analysis split"), (["--only", "magic-*"], "--only"),
                         (["--only", " , "], "--only"), (["--no-fixed-lambda"], "--target-l0s")):
        with pytest.raises(SystemExit) as e:
            study.main(["--preset", "smoke", "--cache", smoke_cfg.cache_dir, "--out", str(tmp_path), "--quiet", *argv])
        assert e.value.code == 2
        # stage logs may precede it (depending on what the shared cache already holds); the error is one line
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("[splitkit]")]
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
