"""End to end at the smoke preset: the README's main job, small."""

import json

import numpy as np
import pandas as pd
import pytest

from studies import universality as study


@pytest.mark.heavy
def test_universality_study_end_to_end(smoke_cfg, tmp_path, capsys, monkeypatch):
    out = tmp_path / "uni`<img src=x onerror=alert(1)>`|x"  # a hostile --out lands in report.md
    argv = ["--preset", "smoke", "--cache", smoke_cfg.cache_dir, "--out", str(out), "--quiet"]
    monkeypatch.setattr("sys.argv", ["universality.py", *argv])  # the command line report.md quotes
    rc = study.main(argv)
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    u = s["universality"]
    for key in ("median_max_act_corr", "mean_max_act_corr", "median_logit_corr_of_match",
                "frac_max_act_corr_gt_0.5", "frac_max_act_corr_gt_0.7"):
        assert key in u["features"] and key in u["neurons"]
    # neurons of two seeds are far from identical but far above chance; chance is near 0
    assert 0.1 < u["neurons"]["median_max_act_corr"] < 0.95
    assert abs(u["chance"]["neurons_shuffled_median_max_act_corr"]) < 0.1
    # a reversed finding would not pass: features match far above their shuffled-token chance level
    # (A against a shuffled B gives about the chance level), and the dictionaries recover most of the loss
    f_med, f_chance = u["features"]["median_max_act_corr"], u["chance"]["features_shuffled_median_max_act_corr"]
    assert f_med > f_chance + 0.2
    for run in ("A", "B"):
        assert 0.5 < s["runs"][run]["sae"]["loss_recovered_zero"] <= 1.0
    # every headline figure has its one-to-one, de-duplicated, twin, baseline and interval companions
    v = u["views"]["features"]
    assert v["many_to_one_median"] == pytest.approx(f_med)
    assert v["one_to_one_median"] <= f_med + 1e-9 and v["dedup_n"] <= v["n"]
    for run in ("A", "B"):
        red = u["redundancy"][run]
        assert 0 <= red["twin_share_act_0.9"] <= 1 and 0 <= red["twin_share_dec_0.9"] <= 1
        assert red["n_clusters_act_0.9"] <= red["n_features"]
    iv = u["intervals"]["features_minus_neurons"]
    assert iv["lo"] <= u["features_minus_neurons_median"] <= iv["hi"]
    b = u["baselines"]
    assert abs(b["features"]["random_act_corr_median"]) < 0.1 and abs(b["neurons"]["random_act_corr_median"]) < 0.1
    # centred random pairs sit near 0, and centring takes away the component all neurons share (also
    # checked on planted effects in test_universality_analysis). An LM trained too briefly fails this:
    # its direct path is one +-frequency direction, every pair correlates at about +-1 (smoke at 40k tokens)
    assert abs(b["features"]["random_logit_corr_centred_median"]) < 0.2
    assert abs(b["neurons"]["random_logit_corr_centred_median"]) < abs(b["neurons"]["random_logit_corr_median"])
    assert s["provenance"]["git_revision"]
    df = pd.read_parquet(out / "matches.parquet")
    assert len(df) == s["config"]["dict"]["sizes"][0]
    assert {"best_b", "corr", "logit_corr_of_match", "mutual", "top_tokens_a"} <= set(df.columns)
    live = df["corr"].notna()
    assert (df.loc[live, "corr"] <= 1 + 1e-9).all()
    for f in ("report.md", "max_corr_hist.png", "max_corr_hist.svg", "corr_vs_density.png", "act_vs_logit_corr.png"):
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    _check_report_markdown(md)
    for head in ("## Intervals", "## Copies inside each dictionary", "## Baselines beside every view"):
        assert head in md
    # both runs' LM and SAE metrics are in the summary
    for run in ("A", "B"):
        assert s["runs"][run]["lm"]["val_loss"] < s["runs"][run]["lm"]["unigram_entropy"]
        assert np.isfinite(s["runs"][run]["sae"]["fvu"])


def _unescaped_pipes(row: str) -> int:
    """Cell separators of a GitHub-style table row: pipes not escaped by a backslash."""
    return sum(1 for i, c in enumerate(row) if c == "|" and (i == 0 or row[i - 1] != "\\"))


def _check_report_markdown(md: str) -> None:
    import re

    # every table row has as many cell separators as its header: no token or path splits a cell
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            want = _unescaped_pipes(lines[i - 1])
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert _unescaped_pipes(lines[j]) == want, lines[j]
                j += 1
    # the hostile folder name sits inside a code span whose fence is longer than any backtick run in it
    cmd = next(line for line in md.splitlines() if line.startswith("Code version"))
    assert "onerror" in cmd
    m = re.search(r"command (`+)", cmd)
    fence = m.group(1)
    body = cmd[m.end():cmd.rindex(fence)]
    assert "<img" in body and max(len(r) for r in re.findall("`+", body)) < len(fence)
    outside = cmd[: m.start()] + cmd[cmd.rindex(fence) + len(fence):]
    assert "<img" not in outside


def test_bad_arguments_are_one_line_errors(smoke_cfg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        study.main(["--preset", "smoke", "--seed-a", "3", "--seed-b", "3", "--cache", smoke_cfg.cache_dir])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must differ" in err[0]
    with pytest.raises(SystemExit) as e:
        study.main(["--preset", "smoke", "--corpus", str(tmp_path / "missing"), "--cache", smoke_cfg.cache_dir])
    assert e.value.code == 2
    assert "no such file" in capsys.readouterr().err
    for argv, needle in ((["--l1-coeff", "0"], "--l1-coeff"), (["--sae-tokens", "1M,2M"], "one token count"),
                         (["--sae-tokens", "lots"], "cannot read")):
        with pytest.raises(SystemExit) as e:
            study.main(["--preset", "smoke", "--cache", smoke_cfg.cache_dir, *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]


@pytest.mark.parametrize("module", ["universality", "universality_scaling", "dictionaries"])
def test_help_states_each_default_once(module, capsys):
    import importlib

    mod = importlib.import_module(f"studies.{module}")
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--preset" in text and "--quiet" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: the preset's) (default:" not in text
