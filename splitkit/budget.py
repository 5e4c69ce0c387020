"""What a study will cost before it starts: peak memory and a rough time, and the guard that stops a
run which cannot fit in memory with one line naming what to lower.

The estimates are sums of array sizes the study will hold at its peak, plus constants measured on
this project's machine (2 cores of an AMD EPYC, 24 GiB, torch CPU). Calibration, 2026-12-01:

Universality (``python -m studies.universality``), peak anonymous memory (``RssAnon`` of the study
process sampled every 0.1 s, warm cache, default preset): the peak is the analysis' attribution
views, where both runs' feature activations (CSR, 8 bytes an entry), both runs' neurons (CSR, 3.8%
of 512 neurons nonzero), the attribution vectors of both runs (float64 values on the features' own
index arrays, 8 bytes an entry), one chunk of column copies of ``correlation.paired_correlation``
(at most 2^24 entries) and the logit effects are alive at once. At the default (2,048 features, 4M
analysis tokens, L0 15.6 measured on the analysis tokens) those parts come to 3.88 GiB and the study
peaked at 5.00 GiB: ``SLACK`` (x1.2, allocator slack and the smaller arrays alive beside them) and
``BASE_BYTES`` (0.4 GiB) are fitted to that, so the estimate at the measured L0 is 5.05 GiB (+1%).
L0 is not known before the dictionaries are trained: ``L0_ASSUMED`` (24, above the 11-25 measured
on the default's dictionaries) stands in for it, so the printed default, 6.3 GiB, errs high by 25%.

Times are for a cold run (every stage built) and for a warm one (every upstream stage cached: the
analysis alone), from per-unit rates measured on the idle machine (docs/performance.md): LM training
20k tokens/s, activation harvest 145k tokens/s, dictionary training 9.0e-9 s per feature and SAE
token, feature activations 6.1e-9 s per feature and analysis token, and the analysis 5.5e-5 s per
analysis token at 2,048 features (220 CPU-s for the warm default, 2026-12-01; scaled linearly with
the number of features plus neurons). The default's cold sum, 14 min, is within 6% of the 14 min
49 s of ``make run`` from a clean clone (idle, 2026-11-26). A loaded machine is 2-5x slower in wall
time (the warm default took 10.7 min at a load average of 12); a GPU is much faster at training.

Those rates are a CPU's with native bf16 GEMMs (AVX512-BF16 or AMX). Where the CPU has neither, the
GEMMs run in float32 and :func:`cpu_slowdown` multiplies the stages by factors measured from a
fresh-clone ``make run`` on a 2-core AVX2-only EPYC (2026-12-02, idle; docs/performance.md): LMs
15.5-16.2k tokens/s (x1.26), harvests 116k tokens/s (x1.25), dictionaries 13.4-14.8k tokens/s at
2,048 features (x3.85), feature activations 76-84 s over 4M tokens (x1.6). The corrected cold
default, 20 min, is 9% above that run's 18.5 min of study wall (26.4 min with the set-up).

Splitting (``python -m studies.splitting``): training and encoding as above, the analysis passes (twins,
links, null, matching) 2.0e-9 s per feature and analysis token, UMAP 4 ms per point, HDBSCAN 7.4e-9 s
per pair of mapped points (scikit-learn's tree is built over all pairs); memory the larger of
training (parameters, gradients, two Adam moments of every size at once, float32) and the analysis
(every size's CSR activations of every run at ``L0_ASSUMED``, twice for the CSC copies of the
links, decoders, the UMAP input), plus ``BASE_BYTES``.

The guard (:func:`check_fits`) compares the peak with ``MemAvailable`` of /proc/meminfo (and, on
CUDA, the training state with the device's free memory). Users who know better skip it with the
studies' ``--no-memory-check`` or ``SPLITKIT_NO_MEMORY_CHECK=1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config, ConfigError, SplittingConfig

GiB = 1 << 30

#: the interpreter with torch, numba, scipy, pandas and splitkit imported (0.25 GiB measured), the
#: numba kernels compiled and the LMs loaded
BASE_BYTES = int(0.4 * GiB)
#: feature firings per token assumed before a dictionary exists (measured 11-25 on the default's dictionaries)
L0_ASSUMED = 24
#: share of the LM's MLP neurons nonzero after the ReLU (measured 0.038 on the default preset)
NEURON_DENSITY = 0.038
#: bytes of one CSR entry: float32 value + int32 column
CSR_ENTRY = 8
#: stored entries of one chunk of ``paired_correlation``'s column copies, and its bytes per entry
#: (the float32 selection, its float64 copy, both sides, and their product)
PAIR_CHUNK_NNZ = 1 << 24
PAIR_CHUNK_ENTRY = 40
#: allocator slack and the smaller arrays alive beside the counted ones: (measured peak - base) / counted parts
SLACK = 1.2

LM_TOKENS_PER_S = 20_000.0
HARVEST_TOKENS_PER_S = 145_000.0
TOKENIZE_S = 30.0
TRAIN_S_PER_FEATURE_TOKEN = 9.0e-9
ENCODE_S_PER_FEATURE_TOKEN = 6.1e-9
#: universality analysis (loading, matching, baselines, views, twins, report) per analysis token, at 2,048
#: features + 512 neurons: 220 CPU-s of the warm default run
UNIV_ANALYSIS_S_PER_TOKEN = 5.5e-5
LINK_S_PER_FEATURE_TOKEN = 2.0e-9
UMAP_S_PER_POINT = 4.0e-3
#: scikit-learn's HDBSCAN builds its tree by Prim's algorithm over all point pairs (O(n^2) distance
#: evaluations on the 10-D map): measured 2,038 s for the paper's
#: two runs of 512..131,072 (523,264 points)
HDBSCAN_S_PER_PAIR = 7.4e-9

#: stage-time factors on a CPU without native bf16 GEMMs (measured on an AVX2-only EPYC; see the module docstring)
FP32_CPU_SLOWDOWN = {"lm": 1.26, "acts": 1.25, "dicts": 3.85, "features": 1.6}

#: set to 1 (or any non-empty value but 0) to skip the memory guard
ENV_SKIP = "SPLITKIT_NO_MEMORY_CHECK"


@dataclass(frozen=True)
class Estimate:
    """A study's predicted cost.

    ``peak_bytes``: host memory at the peak; ``device_bytes``: CUDA memory at the peak (0 on CPU);
    ``time_s`` cold (every stage built) and ``warm_time_s`` (upstream stages cached); ``memory``
    and ``stages`` the named parts; ``lower``: the option to lower first when it does not fit.
    """

    study: str
    peak_bytes: int
    time_s: float
    warm_time_s: float
    lower: str
    memory: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    device_bytes: int = 0

    def line(self) -> str:
        """The one line a study prints before it starts."""
        return (f"estimated peak memory {self.peak_bytes / GiB:.1f} GiB, time ~{self.time_s / 60:.0f} min cold "
                f"(~{max(self.warm_time_s / 60, 1):.0f} min with the upstream stages cached) on this CPU, idle")

    def to_dict(self) -> dict:
        return {"study": self.study, "peak_bytes": int(self.peak_bytes), "device_bytes": int(self.device_bytes),
                "time_s": float(self.time_s), "warm_time_s": float(self.warm_time_s), "lower": self.lower,
                "memory": {k: int(v) for k, v in self.memory.items()},
                "stages": {k: float(v) for k, v in self.stages.items()}}


def cpu_slowdown(device: str) -> dict:
    """Per-stage time factors for ``device``: ``FP32_CPU_SLOWDOWN`` on a CPU whose GEMMs run in float32
    (no AVX512-BF16, no AMX), else none (``{}``; the rates above are already a bf16 CPU's)."""
    from .precision import bf16_is_fast

    kind = str(device).split(":")[0]
    return dict(FP32_CPU_SLOWDOWN) if kind == "cpu" and not bf16_is_fast("cpu") else {}


def _scaled(stages: dict, device: str) -> dict:
    slow = cpu_slowdown(device)
    return {k: v * slow.get(k, 1.0) for k, v in stages.items()}


def _train_state_bytes(sizes, d: int, batch: int) -> int:
    """Every size of a family trained at once: parameters, gradients and two Adam moments (float32,
    encoder and decoder), and the batch's pre-activations, activations and gradients of the largest."""
    n = int(sum(sizes))
    return n * d * 4 * 2 * 4 + batch * int(max(sizes)) * 4 * 3


def universality_estimate(cfg: Config, replicates: int = 1, l0: float = L0_ASSUMED) -> Estimate:
    """Peak memory and time of ``studies.universality`` for ``cfg`` (one size, ``cfg.dict.sizes[0]``).

    Memory parts (bytes), with ``T = cfg.analysis.n_tokens``, ``n`` features, ``d = d_mlp`` and
    ``V`` the vocabulary: ``features`` ``2 T L0 8`` (both runs' CSR), ``neurons`` ``2 T d 0.04 8``,
    ``attribution`` ``2 T L0 8`` (float64 values, shared indices), ``pair_chunk`` ``2^24 x 40``,
    ``effects`` ``2 (n + d) V 12`` (float32 and the centred float64 copy); their sum times ``SLACK``
    plus ``BASE_BYTES``, or the training state where that is larger. ``l0``: feature firings per
    analysis token (``L0_ASSUMED`` before the dictionaries exist).
    """
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    T = int(cfg.analysis.n_tokens)
    n = int(cfg.dict.sizes[0])
    d = int(cfg.model.d_mlp)
    V = int(cfg.tokenizer.vocab_size)
    mem = {
        "features": int(2 * T * l0 * CSR_ENTRY),
        "neurons": int(2 * T * d * NEURON_DENSITY * CSR_ENTRY),
        "attribution": int(2 * T * l0 * 8),
        "pair_chunk": int(min(PAIR_CHUNK_NNZ, 2 * T * l0) * PAIR_CHUNK_ENTRY),
        "effects": 2 * (n + d) * V * 12,
    }
    analysis = int(sum(mem.values()) * SLACK)
    train = _train_state_bytes((n,), d, cfg.dict.batch_size)
    peak = max(analysis, train) + BASE_BYTES
    stages = {
        "tokens": TOKENIZE_S,
        "lm": 2 * cfg.lm.n_tokens / LM_TOKENS_PER_S,
        "acts": 2 * (cfg.acts.n_tokens + T) / HARVEST_TOKENS_PER_S,
        "dicts": 2 * replicates * n * cfg.dict.n_tokens * TRAIN_S_PER_FEATURE_TOKEN,
        "features": 2 * replicates * n * T * ENCODE_S_PER_FEATURE_TOKEN,
        "analysis": replicates * T * UNIV_ANALYSIS_S_PER_TOKEN * (n + d) / (2048 + 512),
    }
    stages = _scaled(stages, cfg.device)
    # which option moves the peak most: the token-proportional arrays or the dictionary's own
    lower = "--analysis-tokens" if analysis >= train and mem["effects"] < analysis / 2 else "--size"
    return Estimate("universality", int(peak), sum(stages.values()), stages["analysis"], lower, mem, stages,
                    device_bytes=_device_bytes(cfg, (n,)))


def splitting_estimate(cfg: Config, scfg: SplittingConfig, n_runs: int = 2, n_recipes: int = 1,
                       l0: float = L0_ASSUMED) -> Estimate:
    """Peak memory and time of ``studies.splitting`` for ``cfg`` and the family ``scfg.sizes``.

    Memory parts, with ``T = scfg.analysis_tokens``, ``N = sum(sizes)`` and ``S`` sizes: ``acts``
    ``runs S T L0 8``, ``links`` the same again (CSC copies), ``decoders`` ``runs N d 12``, ``umap``
    ``runs N neighbours 160``; or the training state ``N d 32 + batch max(sizes) 12`` where larger.
    """
    sizes = tuple(int(s) for s in scfg.sizes)
    N = sum(sizes)
    d = int(cfg.model.d_mlp)
    T = int(scfg.analysis_tokens)
    mem = {
        "acts": int(n_runs * len(sizes) * T * l0 * CSR_ENTRY),
        "links": int(n_runs * len(sizes) * T * l0 * CSR_ENTRY),
        "decoders": n_runs * N * d * (4 + 8),
        "umap": n_runs * N * scfg.umap_neighbors * 8 * 20,
    }
    analysis = sum(mem.values())
    train = _train_state_bytes(sizes, d, cfg.dict.batch_size)
    peak = max(analysis, train) + BASE_BYTES
    stages = {
        "dicts": n_recipes * n_runs * N * cfg.dict.n_tokens * TRAIN_S_PER_FEATURE_TOKEN,
        "features": n_recipes * n_runs * N * T * ENCODE_S_PER_FEATURE_TOKEN,
        "links": n_recipes * n_runs * N * T * LINK_S_PER_FEATURE_TOKEN,
        "umap": n_recipes * n_runs * N * UMAP_S_PER_POINT,
        "clusters": n_recipes * (n_runs * N) ** 2 * HDBSCAN_S_PER_PAIR,
    }
    stages = _scaled(stages, cfg.device)
    lower = "--analysis-tokens or the largest of --sizes" if analysis >= train else "the largest of --sizes"
    warm = stages["links"] + stages["umap"] + stages["clusters"]
    return Estimate("splitting", int(peak), sum(stages.values()), warm, lower, mem, stages,
                    device_bytes=_device_bytes(cfg, sizes))


def _device_bytes(cfg: Config, sizes) -> int:
    """CUDA memory of the largest stage that runs on the device (the family's training), 0 on CPU."""
    if not str(cfg.device).startswith("cuda"):
        return 0
    return _train_state_bytes(sizes, cfg.model.d_mlp, cfg.dict.batch_size) + (512 << 20)  # + CUDA context


def mem_available(meminfo: str | os.PathLike = "/proc/meminfo") -> int | None:
    """Bytes the kernel says a new process can use (``MemAvailable``), None where it cannot be read."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_available(device: str) -> int | None:
    """Free bytes of a CUDA device (``torch.cuda.mem_get_info``), None on CPU or where unknown."""
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except Exception:  # noqa: BLE001 - no device information is no reason to stop
        return None


def skip_requested(flag: bool = False) -> bool:
    """The user asked to skip the guard: ``--no-memory-check`` or ``SPLITKIT_NO_MEMORY_CHECK`` set (not 0)."""
    env = os.environ.get(ENV_SKIP, "").strip()
    return bool(flag) or (env not in ("", "0"))


def check_fits(est: Estimate, available: int | None, device_free: int | None = None) -> None:
    """Raise a one-line ``ConfigError`` naming what to lower when ``est`` does not fit in ``available``
    host bytes (or ``device_free`` CUDA bytes); unknown amounts (None) pass."""
    how = f"or pass --no-memory-check (or set {ENV_SKIP}=1) if you know better"
    if available is not None and est.peak_bytes > available:
        raise ConfigError(f"the {est.study} study needs about {est.peak_bytes / GiB:.1f} GiB at its peak but "
                          f"{available / GiB:.1f} GiB is available; lower {est.lower}, {how}")
    if device_free is not None and est.device_bytes > device_free:
        raise ConfigError(f"the {est.study} study needs about {est.device_bytes / GiB:.1f} GiB on the device but "
                          f"{device_free / GiB:.1f} GiB is free there; lower the largest dictionary size, {how}")


def announce(est: Estimate, device: str, skip: bool = False, stream=None) -> None:
    """Print the estimate's line and stop (``check_fits``) unless the user skipped the check."""
    import sys

    print(est.line(), file=stream or sys.stderr, flush=True)
    if not skip_requested(skip):
        check_fits(est, mem_available(), device_available(device))
