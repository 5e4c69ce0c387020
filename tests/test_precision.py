"""One bf16 rule for the LM, the trainer and the feature encoder."""

import pytest
import torch

from splitkit.lm import resolve_dtype
from splitkit.precision import bf16_is_fast, matmul_dtype


def test_explicit_names_are_obeyed_and_auto_follows_the_hardware():
    assert matmul_dtype("float32", "cuda") == torch.float32
    assert matmul_dtype("bfloat16", "cpu") == torch.bfloat16
    assert matmul_dtype("auto", "cuda") == torch.bfloat16
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert bf16_is_fast("cpu") == native
    assert matmul_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    with pytest.raises(ValueError, match="matmul dtype"):
        matmul_dtype("fp8", "cpu")


def test_the_lm_asks_the_same_rule():
    auto = matmul_dtype("auto", "cpu")
    assert resolve_dtype("bfloat16", "cpu") == ("bfloat16" if auto == torch.bfloat16 else "float32")
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cuda") == "bfloat16"
