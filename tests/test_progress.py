import io

from splitkit import progress


def test_lines_off_a_terminal_are_few_whole_lines(monkeypatch):
    monkeypatch.delenv("SPLITKIT_PROGRESS", raising=False)
    out = io.StringIO()  # not a terminal
    assert progress.use_lines(out)
    p = progress.LineProgress(total=1000, desc="harvest", unit="tok", every_pct=10, every_s=1e9, min_s=0, stream=out)
    for _ in range(1000):
        p.update(1)
    p.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # one line per 10% passed (10%..90%) and one final line
    assert len(lines) == 10, lines
    assert lines[0].startswith("[splitkit] harvest: 100/1.0k tok (10%)")
    assert "ETA" in lines[0] and "done in" in lines[-1] and "(100%)" in lines[-1]


def test_time_trigger_and_resume_offset(monkeypatch):
    t = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: t[0])
    out = io.StringIO()
    p = progress.LineProgress(total=100, desc="LM seed 0", unit="step", initial=40, every_pct=50, every_s=30, min_s=0, stream=out)
    t[0] = 10.0
    p.update(1)  # neither 50% more nor 30 s: silent
    assert out.getvalue() == ""
    t[0] = 31.0
    p.update(1)
    line = out.getvalue().strip()
    assert line.startswith("[splitkit] LM seed 0: 42/100 step (42%)")
    assert "0.1 step/s" in line  # 2 steps since the resume point in 31 s, not 42


def test_forced_modes(monkeypatch):
    monkeypatch.setenv("SPLITKIT_PROGRESS", "bars")
    assert not progress.use_lines(io.StringIO())
    monkeypatch.setenv("SPLITKIT_PROGRESS", "lines")
    assert progress.use_lines()
    assert isinstance(progress.bar(total=3, desc="x"), progress.LineProgress)


def test_short_jobs_stay_quiet_until_min_s(monkeypatch):
    t = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: t[0])
    out = io.StringIO()
    p = progress.LineProgress(total=100, desc="x", every_pct=5, every_s=30, min_s=5, stream=out)
    for i in range(100):
        t[0] = i * 0.1  # the whole job takes 10 s
        p.update(1)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "done in" in lines[-1]  # one line at 5 s, one at the end


def test_stage_lines_say_start_and_time_and_stay_quiet_when_off_or_failed(capsys, monkeypatch):
    from splitkit import progress

    clock = iter([100.0, 165.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock, 0.0))
    with progress.stage("links of run A"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert err == ["[splitkit] links of run A ...", "[splitkit] links of run A: done in 1m05s"]
    with progress.stage("quiet", enabled=False):
        pass
    assert capsys.readouterr().err == ""
    try:
        with progress.stage("failing"):
            raise KeyError("x")
    except KeyError:
        pass
    assert capsys.readouterr().err.splitlines() == ["[splitkit] failing ..."]  # no "done" for a stage that failed
