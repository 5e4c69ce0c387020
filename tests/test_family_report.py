"""The per-family metrics report: `python -m studies.dictionaries` at the smoke preset, then again from cache."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from splitkit.report.dictionaries import family_table, training_figures
from studies import dictionaries as study

SIZES = (64, 128)
METRICS = ("n_features", "mse", "fvu", "l0", "loss_recovered_zero", "loss_recovered_mean", "dead_frac",
           "ultralow_frac", "n_density_tokens", "median_log10_density", "train_tokens", "train_tokens_per_s")


def _stats(n, n_dead, counts):
    return {"n_features": n, "mse": 0.1, "fvu": 0.2, "l0": 3.0, "loss_recovered_zero": 0.9,
            "loss_recovered_mean": 0.8, "dead_frac": n_dead / n, "n_dead": n_dead, "ultralow_frac": 0.0,
            "n_density_tokens": 1000, "ultralow_density": 1e-5,
            "median_log10_density": None if n_dead == n else -2.0,
            "log10_density_hist": {"counts": counts, "edges": [-3.5, -2.5, -1.5, -0.5, 0.5]}}


def test_family_table_rows_units_and_training_figures():
    train = {"tokens": 5000, "tokens_per_s": 250.0, "trainer": {"lr": 1e-3},
             "saes": {"sae_8": {"n_features": 8, "tokens_seen": 5000, "log": {"step": [1, 2], "l0": [4.0, 3.0]}}}}
    df = family_table({8: _stats(8, 8, [0, 0, 0, 0]), 4: _stats(4, 1, [1, 2, 0, 0])}, train)
    assert list(df["n_features"]) == [4, 8]  # ascending, whatever the mapping's order
    assert set(METRICS) <= set(df.columns)
    assert np.isnan(df.loc[1, "median_log10_density"])  # all dead: NaN, and the column stays numeric
    assert list(df["train_tokens"]) == [5000, 5000] and list(df["train_tokens_per_s"]) == [250.0, 250.0]
    fig = training_figures(train)
    assert "log" not in fig["saes"]["sae_8"] and fig["saes"]["sae_8"]["last_log"] == {"step": 2, "l0": 3.0}
    assert "train_tokens" not in family_table({4: _stats(4, 1, [1, 2, 0, 0])}).columns
    with pytest.raises(ValueError, match="empty"):
        family_table({})


@pytest.mark.heavy
def test_dictionaries_study_writes_the_family_report(smoke_cfg, tmp_path, monkeypatch, capsys):
    out = tmp_path / "dicts"
    argv = ["--preset", "smoke", "--cache", smoke_cfg.cache_dir, "--sizes", ",".join(map(str, SIZES)),
            "--out", str(out), "--quiet"]
    assert study.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.lstrip().startswith("n=") and "FVU" in line and "dead" in line for line in printed) == len(SIZES)

    df = pd.read_csv(out / "metrics.csv")
    assert list(df["n_features"]) == list(SIZES) and set(METRICS) <= set(df.columns)
    assert pd.read_parquet(out / "metrics.parquet").shape == df.shape
    assert ((df["dead_frac"] >= 0) & (df["dead_frac"] <= 1)).all()
    assert (df["fvu"] > 0).all() and (df["mse"] > 0).all() and (df["l0"] > 0).all()
    assert ((df["loss_recovered_zero"] >= 0) & (df["loss_recovered_zero"] <= 1.05)).all()
    assert (df["train_tokens"] > 0).all()
    # each dictionary's copies: twin shares are shares, distinct features at most the size
    for col in ("twin_share_act_0.9", "twin_share_dec_0.9"):
        assert df[col].between(0, 1).all(), col
    assert (df["n_clusters_act_0.9"] <= df["n_features"]).all() and (df["twin_median_act_corr"] <= 1).all()

    s = json.loads((out / "summary.json").read_text())
    assert s["sizes"] == list(SIZES) and s["config"]["dict"]["sizes"] == list(SIZES)
    assert s["provenance"]["git_revision"] and s["seed"] == smoke_cfg.seed_a
    assert {"fvu", "dead_frac", "loss_recovered_mean"} <= set(s["metric_definitions"])
    assert all("log" not in rec for rec in s["training"]["saes"].values())  # no per-step logs
    for d in s["dictionaries"]:
        # the histogram counts every feature that fires once, and only those
        alive = d["n_features"] * (1 - d["dead_frac"])
        assert sum(d["log10_density_hist"]["counts"]) == pytest.approx(alive)
        # whole context windows: the analysis tokens rounded up to a multiple of n_ctx
        assert 0 <= d["n_density_tokens"] - smoke_cfg.analysis.n_tokens < smoke_cfg.model.n_ctx
    for f in ("density_hist.png", "density_hist.svg", "report.md"):
        assert (out / f).stat().st_size > 0, f
    assert "density_hist.png" in (out / "report.md").read_text()
    assert "twins > 0.9" in (out / "report.md").read_text()

    # A second run finds the family and its metrics in the cache: nothing is trained again.
    from splitkit import train as trainer

    def no_training(*args, **kwargs):
        raise AssertionError("the second run retrained the cached family")

    monkeypatch.setattr(trainer, "train_family", no_training)
    monkeypatch.setattr(trainer.FamilyTrainer, "train_step", no_training)
    family = s["family_folder"]
    sealed = (Path(family) / "manifest.json").stat().st_mtime_ns
    out2 = tmp_path / "again"
    assert study.main([*argv[:-3], "--out", str(out2), "--quiet"]) == 0
    assert json.loads((out2 / "summary.json").read_text())["family_folder"] == family
    assert (Path(family) / "manifest.json").stat().st_mtime_ns == sealed
    pd.testing.assert_frame_equal(pd.read_csv(out2 / "metrics.csv"), df)  # the same cached metrics
