"""Bad command lines end in one line naming the fix, before any work starts."""

import pytest

from studies import universality


@pytest.mark.parametrize("device, pattern", [("nonsense", "not a torch device"), ("mps", "cpu or cuda"),
                                             ("cuda:0", "CUDA")])
def test_bad_device_is_one_line_before_any_work(device, pattern, capsys, tmp_path, monkeypatch):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    import splitkit.pipeline as P

    for stage in (P.lms, P.acts, P.features):  # every stage module that reads the tokens
        monkeypatch.setattr(stage, "get_tokens", lambda *a, **k: pytest.fail("work started before the device was checked"))
    with pytest.raises(SystemExit) as e:
        universality.main(["--preset", "smoke", "--device", device, "--cache", str(tmp_path), "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and pattern in err and "\n" not in err
