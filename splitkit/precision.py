"""One rule for the precision of the big matrix products: bf16 or fp32, decided once per device type.

bf16 GEMMs (fp32 accumulation) are used where the hardware runs them natively: on CUDA, and on CPUs
with AMX or AVX512-BF16. Elsewhere (an AVX2-only CPU) bf16 is emulated and far slower than fp32, so
fp32 it is. The rule reads the CPU's flags rather than timing a product: a timing on a machine
shared with other jobs could come out either way, and the features stage records the precision in
its cache key. The LM (``lm.train_lm``), the trainer (``train.FamilyTrainer``) and the feature
encoder (``pipeline.get_features``) all ask :func:`matmul_dtype`.
"""

from __future__ import annotations

import functools

import torch

#: the names a config may give: "auto" follows :func:`bf16_is_fast`, the others are obeyed
MATMUL_DTYPES = ("auto", "bfloat16", "float32")


@functools.lru_cache(maxsize=None)
def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 GEMMs run natively on this process's ``device_type`` ("cpu", "cuda", ...)."""
    if device_type == "cuda":
        return True
    if device_type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        return bool(amx or avx512_bf16)
    return False


def matmul_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The GEMM dtype for a config's ``name`` ("auto", "bfloat16", "float32") on ``device``."""
    if name not in MATMUL_DTYPES:
        raise ValueError(f"matmul dtype must be one of {MATMUL_DTYPES}, got {name!r}")
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_is_fast(torch.device(device).type) else torch.float32
