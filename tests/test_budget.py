"""The cost estimate a study prints before it starts, and the memory guard that stops it."""

import pytest

from splitkit import budget
from splitkit.config import ConfigError, get_preset, get_splitting_preset

GiB = 1 << 30


@pytest.fixture(autouse=True)
def bf16_cpu(monkeypatch):
    """The hand-computed rates are a bf16 CPU's: pin that class, whatever CPU runs the tests."""
    monkeypatch.setattr("splitkit.precision.bf16_is_fast", lambda kind: True)


def test_a_cpu_without_bf16_gemms_scales_the_gemm_stages(monkeypatch):
    cfg = get_preset("default")
    fast = budget.universality_estimate(cfg)
    monkeypatch.setattr("splitkit.precision.bf16_is_fast", lambda kind: kind == "cuda")
    slow = budget.universality_estimate(cfg)
    for stage, factor in budget.FP32_CPU_SLOWDOWN.items():
        assert slow.stages[stage] == pytest.approx(factor * fast.stages[stage]), stage
    assert slow.stages["analysis"] == fast.stages["analysis"] and slow.peak_bytes == fast.peak_bytes
    # the measured fp32 default (2026-12-02): 1,111 s of study wall; the bf16 rates alone said ~14 min
    assert 1_000 < slow.time_s < 1_300 and fast.time_s < 900
    # on CUDA the factors do not apply
    gpu = budget.universality_estimate(cfg.replace(device="cuda"))
    assert gpu.stages["dicts"] == fast.stages["dicts"]
    sp = get_splitting_preset("default")
    assert budget.splitting_estimate(cfg, sp).stages["dicts"] == pytest.approx(
        budget.FP32_CPU_SLOWDOWN["dicts"] * budget.splitting_estimate(cfg.replace(device="cuda"), sp).stages["dicts"])


def test_universality_parts_grow_with_tokens_and_size():
    cfg = get_preset("default")
    T, n, d, V = cfg.analysis.n_tokens, cfg.dict.sizes[0], cfg.model.d_mlp, cfg.tokenizer.vocab_size
    e = budget.universality_estimate(cfg)
    L0 = budget.L0_ASSUMED
    # hand-computable parts: both runs' CSR features (8 bytes an entry) and float64 attribution values
    assert e.memory["features"] == 2 * T * L0 * 8
    assert e.memory["attribution"] == 2 * T * L0 * 8
    assert e.memory["effects"] == 2 * (n + d) * V * 12
    twice = budget.universality_estimate(cfg.with_overrides(analysis={"n_tokens": 2 * T}))
    for part in ("features", "neurons", "attribution"):
        assert twice.memory[part] == 2 * e.memory[part]
    assert twice.memory["effects"] == e.memory["effects"]
    # the peak: the parts times the slack plus the interpreter, linear in the tokens
    grown = sum(twice.memory.values()) - sum(e.memory.values())
    assert twice.peak_bytes - e.peak_bytes == pytest.approx(grown * budget.SLACK, abs=2)
    assert twice.stages["features"] == pytest.approx(2 * e.stages["features"])
    assert twice.stages["analysis"] == pytest.approx(2 * e.stages["analysis"])
    big = budget.universality_estimate(cfg.with_overrides(dict={"sizes": (4 * n,)}))
    assert big.memory["effects"] == 2 * (4 * n + d) * V * 12
    assert big.stages["dicts"] == pytest.approx(4 * e.stages["dicts"])
    assert big.stages["lm"] == e.stages["lm"]  # the LMs do not depend on the dictionary
    # replicates train and encode K dictionaries per run
    three = budget.universality_estimate(cfg, replicates=3)
    assert three.stages["dicts"] == pytest.approx(3 * e.stages["dicts"]) and three.peak_bytes == e.peak_bytes
    assert e.time_s > e.warm_time_s > 0


def test_splitting_parts_grow_with_the_family():
    cfg = get_preset("default")
    small_s, paper_s = get_splitting_preset("default"), get_splitting_preset("paper")
    small = budget.splitting_estimate(cfg, small_s)
    T, S = small_s.analysis_tokens, len(small_s.sizes)
    assert small.memory["acts"] == 2 * S * T * budget.L0_ASSUMED * 8
    assert small.memory["decoders"] == 2 * sum(small_s.sizes) * cfg.model.d_mlp * 12
    one = budget.splitting_estimate(cfg, small_s, n_runs=1)
    assert one.memory["acts"] * 2 == small.memory["acts"]
    assert small.stages["dicts"] == pytest.approx(2 * sum(small_s.sizes) * cfg.dict.n_tokens * 9.0e-9)
    big = budget.splitting_estimate(cfg, paper_s)
    assert big.peak_bytes > small.peak_bytes and big.time_s > small.time_s
    # HDBSCAN's tree is quadratic in the mapped points: the paper's family is ~100x the default's points
    ratio = (sum(paper_s.sizes) / sum(small_s.sizes)) ** 2
    assert big.stages["clusters"] == pytest.approx(ratio * small.stages["clusters"])
    assert big.stages["clusters"] == pytest.approx((2 * 261_632) ** 2 * budget.HDBSCAN_S_PER_PAIR)
    two = budget.splitting_estimate(cfg, small_s, n_recipes=2)
    assert two.time_s == pytest.approx(2 * small.time_s)


def test_mem_available_reads_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n")
    assert budget.mem_available(f) == 2048 * 1024
    f.write_text("MemTotal: 1 kB\n")
    assert budget.mem_available(f) is None
    assert budget.mem_available(tmp_path / "missing") is None


def test_guard_stops_with_one_line_naming_what_to_lower(tmp_path, monkeypatch):
    cfg = get_preset("default")
    e = budget.universality_estimate(cfg)
    budget.check_fits(e, e.peak_bytes + 1)  # fits: nothing happens
    budget.check_fits(e, None)  # unknown: nothing happens
    with pytest.raises(ConfigError) as err:
        budget.check_fits(e, e.peak_bytes - 1)
    msg = str(err.value)
    assert "\n" not in msg and "lower --analysis-tokens" in msg and "--no-memory-check" in msg
    # where the dictionary's own arrays dominate, the size is what to lower
    wide = budget.universality_estimate(cfg.with_overrides(dict={"sizes": (131072,)}, analysis={"n_tokens": 100_000}))
    with pytest.raises(ConfigError, match="lower --size"):
        budget.check_fits(wide, 1)
    s = budget.splitting_estimate(cfg, get_splitting_preset("default"))
    with pytest.raises(ConfigError, match="lower .*--sizes"):
        budget.check_fits(s, s.peak_bytes - 1)
    # announce reads /proc/meminfo: a tiny MemAvailable stops it, the flag or the variable lets it pass
    f = tmp_path / "meminfo"
    f.write_text("MemAvailable:    1024 kB\n")
    real = budget.mem_available
    monkeypatch.setattr(budget, "mem_available", lambda path=f: real(path))
    with pytest.raises(ConfigError, match="1.0 MiB|0.0 GiB is available"):
        budget.announce(e, "cpu")
    budget.announce(e, "cpu", skip=True)
    monkeypatch.setenv(budget.ENV_SKIP, "1")
    budget.announce(e, "cpu")
    monkeypatch.setenv(budget.ENV_SKIP, "0")
    with pytest.raises(ConfigError):
        budget.announce(e, "cpu")


def test_device_memory_is_checked_on_cuda_only():
    cfg = get_preset("default")
    cpu = budget.universality_estimate(cfg)
    assert cpu.device_bytes == 0
    cuda = budget.universality_estimate(cfg.replace(device="cuda"))
    assert cuda.device_bytes > 0
    budget.check_fits(cuda, None, cuda.device_bytes)
    with pytest.raises(ConfigError, match="on the device"):
        budget.check_fits(cuda, None, cuda.device_bytes - 1)


@pytest.mark.parametrize("module", ["universality", "splitting"])
def test_study_prints_the_estimate_and_stops_when_it_cannot_fit(module, smoke_cfg, tmp_path, capsys, monkeypatch):
    import importlib

    study = importlib.import_module(f"studies.{module}")
    monkeypatch.delenv(budget.ENV_SKIP, raising=False)
    monkeypatch.setattr(budget, "mem_available", lambda path=None: 1 << 20)
    with pytest.raises(SystemExit) as e:
        study.main(["--preset", "smoke", "--cache", smoke_cfg.cache_dir, "--out", str(tmp_path / "out"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("estimated peak memory ") and " min cold" in err[0]
    assert err[1].startswith("error: ") and "lower --" in err[1]
    assert not (tmp_path / "out").exists()  # stopped before any work
