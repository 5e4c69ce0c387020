"""``config.parse_sizes``: every accepted form, and a one-line error naming the fix for each bad one."""

import pytest

from splitkit.config import ConfigError, parse_sizes


@pytest.mark.parametrize("spec, want", [
    ("512..131072", (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)),
    ("512..131072x4", (512, 2048, 8192, 32768, 131072)),
    ("512..4608x3", (512, 1536, 4608)),
    ("512..512", (512,)),
    ("512,2048,8192", (512, 2048, 8192)),
    ("8192, 512 ,2048", (512, 2048, 8192)),  # any order, returned sorted
    ("4096", (4096,)),
    (" 1000 ", (1000,)),
])
def test_accepted_forms(spec, want):
    got = parse_sizes(spec)
    assert got == want and all(type(v) is int for v in got)


@pytest.mark.parametrize("spec, fix", [
    ("131072..512", "put the smaller size first: 512..131072"),
    ("4096..512x4", "512..4096x4"),
    ("0", "positive integer"),
    ("512..0", "positive integer"),
    ("-4", "positive integer"),
    ("512,-1024", "positive integer"),
    ("1.5", "not an integer"),
    ("512..4096x1.5", "not an integer"),
    ("abc", "not an integer"),
    ("512,512", "give each size once"),
    ("512,1024,512", "[512] repeated"),
    ("512,,1024", "item 2 is missing"),
    ("512,1024,", "item 3 is missing"),
    ("", "empty"),
    ("   ", "empty"),
    ("512..4096x1", "step of 2 or more"),
    ("512..1000", "end at 1024 (512..1024)"),
    ("512..4096x4", "end at 2048 (512..2048x4) or 8192 (512..8192x4)"),
    ("..4096", "start is missing"),
    ("512..", "end is missing"),
    ("512..4096x", "step is missing"),
    ("512..4096x0", "positive integer"),
    ("512..2048..4096", "one '..' per range"),
])
def test_errors_name_the_fix(spec, fix):
    with pytest.raises(ConfigError) as info:
        parse_sizes(spec)
    msg = str(info.value)
    assert fix in msg and "\n" not in msg and msg.startswith("--sizes:")
