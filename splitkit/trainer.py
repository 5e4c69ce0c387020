"""Train a family of dictionaries (different sizes, same inputs) in one pass over the activations.

Recipes (``TrainerConfig.recipe``)
----------------------------------
``"paper"`` -- Bricken et al. 2023, *Towards Monosemanticity* (Problem Setup and the appendix on
    autoencoder training). Loss = MSE (mean over batch and input dims) + lambda * sum_i |f_i|
    (summed over features, averaged over the batch). Adam. Decoder rows kept at unit norm: the
    gradient component parallel to each row is removed before the Adam step and the rows are
    re-normalised after it. b_dec starts at the geometric median of a sample of inputs (Weiszfeld).
    Dead features are resampled at fixed steps (paper: 25k/50k/75k/100k of 1M with a 12,500-step
    dead window; here fractions of ``n_steps``, window = half the spacing as in the paper): a
    feature is dead if it fired on no token in the window; each dead feature gets the direction of
    an input x drawn with probability proportional to the square of the input's reconstruction loss
    ||x - x_hat||^2; decoder row = (x - b_dec) normalised; encoder column = the same scaled to 0.2 x
    the mean norm of the live encoder columns; b_enc = 0; Adam moments of those rows/columns reset.
``"l1_decnorm"`` -- Anthropic's April 2024 update ("Training Sparse Autoencoders", Circuits
    Updates, transformer-circuits.pub/2024/april-update). Penalty lambda * sum_i f_i ||W_dec,i||;
    decoder unconstrained; no resampling; lambda warmed up linearly over the first 5% of steps;
    learning rate decayed linearly to 0 over the last 20%; decoder rows start with norm 0.1 and
    the encoder at the decoder's transpose. b_dec starts at the elementwise mean of the inputs
    (the update starts it at 0 and normalises inputs instead; centring only moves where
    optimisation starts). Gradient clipping, also in the update, is not done here.
``"topk"`` -- Gao et al. 2024, *Scaling and evaluating sparse autoencoders* (OpenAI). f keeps the k
    largest pre-activations per token (ReLU'd); loss = MSE + (1/32) * AuxK, where AuxK is the MSE
    between the main residual e = x - x_hat (held fixed) and its reconstruction from the top
    k_aux = d_in/2 pre-activations among dead latents (dead = no firing in the window). Unit-norm
    decoder with the parallel gradient removed; b_dec at the geometric median.

Speed
-----
Forward and backward are written by hand under ``torch.no_grad()`` (tested against autograd).
The encoder GEMM ``(x - b_dec) @ W_enc`` is the one product every step must pay in full. After it,
when the share of active (token, feature) pairs is small (``sparse_density_max``), the step works
on the active pairs only: decode and both weight gradients are gathered sums
(``embedding_bag``), and the gradient of the pre-activations is needed only at active pairs
(``sampled_addmm``, an SDDMM); the gradient reaching b_dec through x_bar needs only
``W_enc @ sum_b dpre_b`` (a GEMV). So five of the six dense GEMMs of a plain step disappear, and the
L1 gradient is just lambda on the active pairs. Early in training, while half of the features
fire, the step falls back to dense GEMMs (the break-even is near 12% of pairs active). Adam is torch's fused kernel; work buffers are kept
between steps (fresh multi-MiB allocations cost page faults on every step on CPU). Large
dictionaries are processed in row chunks of the batch so memory stays bounded. On a 2-core
machine shared with other jobs, ``torch.set_num_threads(1)`` can beat 2 threads: each parallel op
then stops waiting for a second core that is busy elsewhere.

Matmul precision: ``matmul_dtype="bfloat16"`` runs the big GEMMs in bf16 (fp32 master weights,
loss, Adam state and decoder-norm maths, because bf16 keeps ~3 significant digits: Adam's second
moment and the norms of near-unit rows would lose most of their information). ``"auto"`` picks bf16
on CUDA and on CPUs with AMX or AVX512-BF16, float32 elsewhere (on AVX2-only CPUs bf16 GEMMs are
emulated and far slower than fp32).

Determinism: every random draw is keyed by (seed, step, dictionary), and the source is asked for
batch ``step``; so a run resumed from a checkpoint is bitwise identical to an uninterrupted one on
CPU, and a dictionary trained inside a family is bitwise identical to it trained alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .sae import SparseAutoencoder, atomic_save_tensors, atomic_write_json

__all__ = [
    "ActivationSource",
    "TensorSource",
    "TrainerConfig",
    "train_family",
    "run_trainer",
    "FamilyTrainer",
    "geometric_median",
    "sae_step",
    "RECIPES",
]

RECIPES = ("paper", "l1_decnorm", "topk")
MATMUL_DTYPES = ("auto", "bfloat16", "float32")
_PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
CHECKPOINT_POINTER = "checkpoint.json"
TRAINER_FORMAT_VERSION = 1


def _mix(*ints: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b(repr(tuple(int(i) for i in ints)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------
# Activation sources
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class ActivationSource(Protocol):
    """Where training inputs come from. ``get_batch(step)`` must be a pure function of ``step``."""

    d: int
    batch_size: int
    n_tokens: int

    def get_batch(self, step: int) -> torch.Tensor:
        """Batch number ``step``: ``[batch_size, d]``, float32 or bfloat16."""
        ...


class TensorSource:
    """In-memory ``ActivationSource`` over ``x [N, d]``.

    Epoch e visits the rows in a fresh random permutation seeded by (seed, e); batch ``step`` is
    rows ``[i * batch_size, (i + 1) * batch_size)`` of its epoch's permutation. The last
    ``N mod batch_size`` rows of each permutation are skipped (they differ from epoch to epoch).
    """

    def __init__(self, x: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        if x.ndim != 2 or not x.is_floating_point():
            raise ValueError(f"TensorSource needs a float tensor [N, d], got dtype {x.dtype} shape {tuple(x.shape)}")
        if not 1 <= batch_size <= x.shape[0]:
            raise ValueError(f"TensorSource batch_size must be in [1, N={x.shape[0]}], got {batch_size}")
        self.x = x
        self.d = int(x.shape[1])
        self.batch_size = int(batch_size)
        self.n_tokens = int(x.shape[0])
        self.seed = int(seed)
        self._steps_per_epoch = self.n_tokens // self.batch_size
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def get_batch(self, step: int) -> torch.Tensor:
        if step < 0:
            raise ValueError(f"TensorSource.get_batch: step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self._steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._perm = torch.randperm(self.n_tokens, generator=gen).to(self.x.device)
            self._epoch = epoch
        rows = self._perm[i * self.batch_size:(i + 1) * self.batch_size]
        return self.x.index_select(0, rows)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainerConfig:
    """How to train a family. Defaults run a 4,096-feature dictionary on this CPU in minutes.

    recipe: "paper" | "l1_decnorm" | "topk" (see module docstring). lr: Adam step size (the paper
    does not state it). l1_coeff: lambda (0.004 is the paper's value for A/5; unused by topk).
    k: topk's k (None: each dictionary's own ``cfg.k``). aux_k / aux_coeff: AuxK's k_aux (None:
    d_in // 2) and weight. n_steps: steps of ``batch_size`` tokens (the source's batch size is what
    is used). resample_steps: paper recipe; None means ``resample_fracs`` of n_steps. dead_window:
    steps without firing after which a feature counts as dead (None: 2.5% of n_steps, half the
    default resample spacing, like the paper's 12.5k of 25k); firing counts are also accumulated
    over windows of this length for density statistics. resample_n_inputs: inputs scored when
    resampling (paper: 819,200). l1_warmup_frac / lr_decay_frac: None means the recipe's default
    (l1_decnorm: 0.05 / 0.2; others 0 / 0). matmul_dtype: "auto" | "bfloat16" | "float32".
    sparse_density_max: use the sparse backward when at most this share of (token, feature) pairs
    is active (the measured break-even on 2 CPU cores was 12-15%). chunk_elems: largest [rows, n]
    block held at once (bounds memory for large n).
    snapshot_steps: after these many steps, save a copy of every dictionary. checkpoint_every:
    steps between checkpoints (0: only at the end). log_every: steps between logged metrics.
    """

    recipe: str = "paper"
    lr: float = 1e-3
    l1_coeff: float = 4e-3
    k: int | None = None
    aux_k: int | None = None
    aux_coeff: float = 1.0 / 32.0
    n_steps: int = 2000
    batch_size: int = 4096
    resample_steps: tuple[int, ...] | None = None
    resample_fracs: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20)
    dead_window: int | None = None
    resample_n_inputs: int = 65536
    l1_warmup_frac: float | None = None
    lr_decay_frac: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    matmul_dtype: str = "auto"
    sparse_density_max: float = 0.1
    chunk_elems: int = 1 << 26
    seed: int = 0
    snapshot_steps: tuple[int, ...] = ()
    checkpoint_every: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        # Tuples may arrive as lists (from JSON): store tuples so the config stays hashable.
        for name in ("resample_steps", "resample_fracs", "snapshot_steps"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.recipe not in RECIPES:
            raise ValueError(f"TrainerConfig.recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.matmul_dtype not in MATMUL_DTYPES:
            raise ValueError(f"TrainerConfig.matmul_dtype must be one of {MATMUL_DTYPES}, got {self.matmul_dtype!r}")
        for name in ("n_steps", "batch_size", "resample_n_inputs", "chunk_elems", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainerConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("lr", "l1_coeff", "aux_coeff", "adam_eps"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"TrainerConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("adam_beta1", "adam_beta2", "sparse_density_max"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise ValueError(f"TrainerConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("l1_warmup_frac", "lr_decay_frac"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"TrainerConfig.{name} must be None or in [0, 1], got {value!r}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"TrainerConfig.k must be None or >= 1, got {self.k!r}")
        if self.aux_k is not None and self.aux_k < 1:
            raise ValueError(f"TrainerConfig.aux_k must be None or >= 1, got {self.aux_k!r}")
        if self.dead_window is not None and self.dead_window < 1:
            raise ValueError(f"TrainerConfig.dead_window must be None or >= 1, got {self.dead_window!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"TrainerConfig.checkpoint_every must be >= 0, got {self.checkpoint_every!r}")
        if self.resample_steps is not None and any(not 0 < s < self.n_steps for s in self.resample_steps):
            raise ValueError(f"TrainerConfig.resample_steps must lie in (0, n_steps={self.n_steps}), "
                             f"got {self.resample_steps}")
        if any(not 0 < f < 1 for f in self.resample_fracs):
            raise ValueError(f"TrainerConfig.resample_fracs must lie in (0, 1), got {self.resample_fracs}")
        if any(not 0 < s <= self.n_steps for s in self.snapshot_steps):
            raise ValueError(f"TrainerConfig.snapshot_steps must lie in (0, n_steps={self.n_steps}], "
                             f"got {self.snapshot_steps}")

    # -- resolved defaults
    @property
    def resolved_resample_steps(self) -> tuple[int, ...]:
        if self.recipe != "paper":
            return ()
        if self.resample_steps is not None:
            return tuple(sorted(set(int(s) for s in self.resample_steps)))
        steps = {int(round(f * self.n_steps)) for f in self.resample_fracs}
        return tuple(sorted(s for s in steps if 0 < s < self.n_steps))

    @property
    def resolved_dead_window(self) -> int:
        if self.dead_window is not None:
            return int(self.dead_window)
        return max(1, int(round(0.025 * self.n_steps)))

    @property
    def resolved_l1_warmup_frac(self) -> float:
        if self.l1_warmup_frac is not None:
            return float(self.l1_warmup_frac)
        return 0.05 if self.recipe == "l1_decnorm" else 0.0

    @property
    def resolved_lr_decay_frac(self) -> float:
        if self.lr_decay_frac is not None:
            return float(self.lr_decay_frac)
        return 0.2 if self.recipe == "l1_decnorm" else 0.0

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step``: constant, then linear decay to 0 over the last lr_decay_frac."""
        decay = self.resolved_lr_decay_frac * self.n_steps
        if decay <= 0:
            return self.lr
        return self.lr * min(1.0, (self.n_steps - step) / decay)

    def l1_at(self, step: int) -> float:
        """lambda at ``step``: linear warm-up from 0 over the first l1_warmup_frac, then constant."""
        warm = self.resolved_l1_warmup_frac * self.n_steps
        if warm <= 0:
            return self.l1_coeff
        return self.l1_coeff * min(1.0, (step + 1) / warm)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("resample_steps", "resample_fracs", "snapshot_steps"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainerConfig.from_dict: unknown keys {unknown}; allowed {sorted(known)}")
        return cls(**data)


def resolve_matmul_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu":
        fast = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or getattr(
            torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        return torch.bfloat16 if fast else torch.float32
    return torch.float32


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def geometric_median(x: torch.Tensor, n_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Geometric median of the rows of ``x [N, d]`` by Weiszfeld's iterations -> ``[d]`` (fp32)."""
    x = x.float()
    y = x.mean(0)
    for _ in range(n_iter):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)  # [N]; clamp guards a point sitting on y
        y_next = (w @ x) / w.sum()
        done = (y_next - y).norm() <= tol * y.norm().clamp_min(1.0)
        y = y_next
        if done:
            break
    return y


def _sample_inputs(source: ActivationSource, n_inputs: int, around_step: int, device: torch.device) -> torch.Tensor:
    """About ``n_inputs`` rows (whole batches, at least one, at most the source) -> fp32 ``[M, d]``.

    Uses the batches just before ``around_step`` (already seen in training), or the first batches
    when there are not enough of those; all deterministic in ``around_step``.
    """
    n_inputs = min(n_inputs, source.n_tokens)
    n_batches = max(1, math.ceil(n_inputs / source.batch_size))
    start = around_step - n_batches if around_step >= n_batches else 0
    return torch.cat([source.get_batch(s).to(device=device, dtype=torch.float32)
                      for s in range(start, start + n_batches)])


class _Buffers:
    """Work tensors kept between steps, keyed by name (re-made only when shape or dtype change)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.shape != shape:
            buf = torch.empty(shape, dtype=dtype, device=self.device)
            self._bufs[name] = buf
        return buf


def _csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta" and invariant-check notices
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _sddmm(crow: torch.Tensor, cols: torch.Tensor, base: torch.Tensor, a: torch.Tensor, b_t: torch.Tensor,
           n: int, alpha: float = 1.0) -> torch.Tensor:
    """``base + alpha * (a @ b_t)[row, col]`` at the pairs of a CSR pattern (sampled dense-dense matmul)."""
    pattern = _csr(crow, cols, base, (a.shape[0], n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse.sampled_addmm(pattern, a, b_t, alpha=alpha).values()


def _stable_argsort(keys: torch.Tensor) -> torch.Tensor:
    """Stable argsort of a 1-D integer tensor. On CPU via numpy: torch's CPU sort took ~15x longer
    here (170 ms vs 12 ms for 115k keys on 2 cores)."""
    if keys.device.type == "cpu":
        return torch.from_numpy(np.argsort(keys.numpy(), kind="stable"))
    return torch.argsort(keys, stable=True)


def _bag_sum(table: torch.Tensor, idx: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Row b of the result = sum_j weights[j] * table[idx[j]] over j in [offsets[b], offsets[b+1])."""
    return F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=weights, include_last_offset=True)


# ---------------------------------------------------------------------------------------------
# One optimisation step of one dictionary
# ---------------------------------------------------------------------------------------------
@dataclass
class StepStats:
    """What one step measured (tensors on the training device, fp32 scalars and [n] counts)."""

    loss: torch.Tensor
    mse: torch.Tensor
    l1: torch.Tensor
    aux: torch.Tensor
    fire_counts: torch.Tensor  # [n] int64: tokens each feature fired on in this batch
    sparse: bool


@torch.no_grad()
def sae_step(sae: SparseAutoencoder, x: torch.Tensor, *, recipe: str, l1_coeff: float,
             mm_dtype: torch.dtype = torch.float32, sparse_density_max: float = 0.1,
             chunk_elems: int = 1 << 26, dead_mask: torch.Tensor | None = None,
             aux_k: int | None = None, aux_coeff: float = 1.0 / 32.0,
             buffers: _Buffers | None = None) -> StepStats:
    """Forward + hand-written backward of one batch ``x [B, d]``: fills ``p.grad`` of every parameter.

    The gradient is that of the recipe's loss (see module docstring) w.r.t. the parameters, before
    any decoder-norm projection (the trainer applies that). ``dead_mask [n]`` (bool) selects the
    latents AuxK may use (topk recipe). ``sparse_density_max`` of 0 forces the dense path and 1 the
    sparse one (tests compare both against autograd).
    """
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dev = W_enc.device
    bufs = buffers if buffers is not None else _Buffers(dev)
    for p in (W_enc, b_enc, W_dec, b_dec):
        if p.grad is None or p.grad.shape != p.shape:
            p.grad = torch.zeros_like(p)
    x = x.to(device=dev, dtype=torch.float32)
    B, d = x.shape
    n = sae.n_features
    topk = sae.cfg.architecture == "topk"
    chunk = max(1, min(B, chunk_elems // n))
    inv = 2.0 / (B * d)  # d(mean of squares)/d(residual) factor
    low = mm_dtype != torch.float32

    # The L1 term's gradient on an active pre-activation is a constant per feature: lambda/B, or
    # lambda*||W_dec,i||/B for l1_decnorm. Norms in fp32 (bf16 would round ||row|| = 1 to 3 digits).
    dec_norm = W_dec.norm(dim=1) if recipe == "l1_decnorm" else None  # [n]
    if recipe == "topk":
        c_feat: float | torch.Tensor = 0.0
    elif dec_norm is not None:
        c_feat = dec_norm * (l1_coeff / B)
    else:
        c_feat = l1_coeff / B

    xbar = torch.sub(x, b_dec, out=bufs.get("xbar", (B, d)))  # [B, d]
    xbar_mm = xbar.to(mm_dtype) if low else xbar
    W_enc_mm = W_enc.to(mm_dtype) if low else W_enc
    b_enc_mm = b_enc.to(mm_dtype) if low else b_enc
    pre_buf = bufs.get("pre", (chunk, n), mm_dtype)  # [chunk, n]
    mask_buf = None if topk else bufs.get("mask", (chunk, n), torch.bool)

    # ---- encoder GEMM, chunk by chunk, keeping only the active pairs (sparse path) -----------
    rows_l: list[torch.Tensor] = []
    cols_l: list[torch.Tensor] = []
    vals_l: list[torch.Tensor] = []
    aux_rows_l: list[torch.Tensor] = []
    aux_cols_l: list[torch.Tensor] = []
    aux_vals_l: list[torch.Tensor] = []
    k = sae.cfg.k
    dead_idx = None
    if topk and dead_mask is not None and aux_coeff > 0:
        dead_idx = dead_mask.nonzero().squeeze(1)
        if dead_idx.numel() == 0:
            dead_idx = None
    kaux = 0 if dead_idx is None else min(aux_k or d // 2, dead_idx.numel())
    neg_b_enc = None if topk else (-b_enc).to(mm_dtype)  # [n]
    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        r = e - s
        if topk:
            pre = torch.addmm(b_enc_mm, xbar_mm[s:e], W_enc_mm, out=pre_buf[:r])  # [r, n]
        else:
            # ReLU: z = x_bar @ W_enc without the bias (addmm would first copy b_enc into all of
            # [r, n]); a pair is active iff z > -b_enc, and the bias is added to active pairs only.
            pre = torch.mm(xbar_mm[s:e], W_enc_mm, out=pre_buf[:r])  # [r, n] z
        if topk:
            vals, idx = pre.topk(k, dim=1, sorted=False)  # [r, k]
            idx, order = idx.sort(dim=1)  # CSR wants rows' columns ascending (cuSPARSE does)
            vals = vals.gather(1, order).float().relu_()
            rows_l.append(torch.arange(s, e, device=dev).repeat_interleave(k))
            cols_l.append(idx.reshape(-1))
            vals_l.append(vals.reshape(-1))
            if kaux:
                pre_dead = pre.index_select(1, dead_idx)  # [r, n_dead]
                avals, aidx = pre_dead.topk(kaux, dim=1, sorted=False)
                aidx = dead_idx[aidx]
                aidx, order = aidx.sort(dim=1)
                aux_rows_l.append(torch.arange(s, e, device=dev).repeat_interleave(kaux))
                aux_cols_l.append(aidx.reshape(-1))
                aux_vals_l.append(avals.gather(1, order).float().relu_().reshape(-1))
            continue
        mask = torch.gt(pre, neg_b_enc, out=mask_buf[:r])
        if s == 0:
            # Decide the path from a sample of the first chunk's rows (deterministic, cheap).
            probe = mask[: min(r, 256)]
            density = torch.count_nonzero(probe).item() / probe.numel()
            if density > sparse_density_max:
                pre.add_(b_enc_mm)
                return _dense_relu_step(sae, x, xbar, xbar_mm, W_enc_mm, b_enc_mm, pre, chunk, recipe,
                                        l1_coeff, c_feat, dec_norm, inv, mm_dtype, bufs)
        flat = torch.nonzero(mask.view(-1)).squeeze(1)  # [m] row-major, so rows come out sorted
        vals = pre.view(-1).index_select(0, flat).float()
        r_idx = flat.div(n, rounding_mode="floor")
        c_idx = flat.sub_(r_idx, alpha=n)
        # fp32: z > -b implies fl(z + b) > 0 (the exact sum is positive and cannot round to 0).
        vals.add_(b_enc.index_select(0, c_idx))
        r_idx = r_idx.add_(s) if s else r_idx
        if low:  # bf16 rounding of z and -b_enc can disagree with the fp32 sum at the threshold
            keep = vals > 0
            r_idx, c_idx, vals = r_idx[keep], c_idx[keep], vals[keep]
        rows_l.append(r_idx)
        cols_l.append(c_idx)
        vals_l.append(vals)

    def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    rows, cols, vals = _cat(rows_l), _cat(cols_l), _cat(vals_l)  # [nnz] each
    nnz = rows.numel()
    if topk:
        crow = torch.arange(0, B * k + 1, k, device=dev)
    else:
        crow = torch.zeros(B + 1, dtype=torch.long, device=dev)
        torch.cumsum(torch.bincount(rows, minlength=B), 0, out=crow[1:])

    # ---- decode: x_hat = f @ W_dec + b_dec as a gathered sum over the active pairs ----------
    # Every pass over a [B, d] or [n, d] array costs milliseconds on CPU, so the residual is formed
    # in one op (x_hat - x = f @ W_dec - x_bar) and the factor 2/(B d) of dLoss/dx_hat is never
    # applied to [B, d]: it is folded into the SDDMM's alpha and the gathered sums' weights.
    n_tab = 2 * B if kaux else B
    table = bufs.get("table", (n_tab, d))  # rows [0, B): residual; [B, 2B): AuxK residual
    err = table[:B]
    if nnz:
        torch.sub(_bag_sum(W_dec, cols, crow, vals), xbar, out=err)  # [B, d] x_hat - x
    else:
        torch.neg(xbar, out=err)
    err_flat = err.view(-1)
    mse = torch.dot(err_flat, err_flat) / (B * d)
    ones_B = bufs.get("ones_B", (B,))
    ones_B.fill_(1.0)

    # ---- gradient at the active pre-activations only (SDDMM), plus L1's constant ------------
    base = c_feat.index_select(0, cols) if isinstance(c_feat, torch.Tensor) else torch.full_like(vals, c_feat)
    dpre = _sddmm(crow, cols, base, err, W_dec.t(), n, inv) if nnz else vals.clone()  # [nnz]
    if topk:
        dpre.mul_(vals > 0)  # ReLU after topk: no gradient through kept-but-negative entries
    fired = vals > 0 if topk else None

    aux_loss = torch.zeros((), device=dev)
    tab_rows, tab_cols, tab_w = rows, cols, vals * inv
    enc_rows, enc_w = rows, dpre
    if kaux:
        a_rows, a_cols, a_vals = torch.cat(aux_rows_l), torch.cat(aux_cols_l), torch.cat(aux_vals_l)
        a_crow = torch.arange(0, B * kaux + 1, kaux, device=dev)
        # AuxK: reconstruct the (fixed) residual e = x - x_hat = -err from dead latents, no bias.
        a_err = torch.add(_bag_sum(W_dec, a_cols, a_crow, a_vals), err, out=table[B:])  # e_hat - e
        a_flat = a_err.view(-1)
        aux_loss = torch.dot(a_flat, a_flat) / (B * d)
        a_scale = aux_coeff * inv
        a_dpre = _sddmm(a_crow, a_cols, torch.zeros_like(a_vals), a_err, W_dec.t(), n, a_scale).mul_(a_vals > 0)
        # One gathered sum serves both losses: aux rows index the second half of the table.
        tab_rows = torch.cat([rows, a_rows + B])
        tab_cols = torch.cat([cols, a_cols])
        tab_w = torch.cat([tab_w, a_vals * a_scale])
        enc_rows = torch.cat([rows, a_rows])
        enc_w = torch.cat([dpre, a_dpre])

    # ---- weight gradients as gathered sums in feature-major (CSC) order ----------------------
    perm = _stable_argsort(tab_cols)
    ccol = torch.zeros(n + 1, dtype=torch.long, device=dev)
    torch.cumsum(torch.bincount(tab_cols, minlength=n), 0, out=ccol[1:])
    if tab_cols.numel():
        # The gathered sums return fresh tensors: hand them over as gradients without a copy.
        W_dec.grad = _bag_sum(table[:n_tab], tab_rows.index_select(0, perm), ccol, tab_w.index_select(0, perm))
        dW_enc_T = _bag_sum(xbar, enc_rows.index_select(0, perm), ccol, enc_w.index_select(0, perm))  # [n, d]
        # Contiguous on purpose: torch's fused CPU Adam ignores a gradient's strides.
        W_enc.grad.copy_(dW_enc_T.t())
    else:
        W_dec.grad.zero_()
        W_enc.grad.zero_()
    b_enc.grad.zero_().index_add_(0, tab_cols, enc_w)
    # b_dec: directly through x_hat (sum of g) and through x_bar = x - b_dec at the encoder input.
    g_sum = torch.mv(err.t(), ones_B).mul_(inv)  # [d]
    torch.addmv(g_sum, W_enc, b_enc.grad, alpha=-1.0, out=b_dec.grad)

    if dec_norm is not None:
        f_sum = torch.zeros(n, device=dev).index_add_(0, cols, vals)  # [n] sum over tokens of f
        l1 = torch.dot(f_sum, dec_norm) / B
        # d/dW_dec of lambda/B * sum_i S_i ||W_dec,i|| = lambda/B * S_i * W_dec,i / ||W_dec,i||
        W_dec.grad.addcmul_(W_dec, (f_sum * (l1_coeff / B) / dec_norm.clamp_min(1e-12)).unsqueeze(1))
    else:
        l1 = vals.sum() / B
    if topk:
        counts = torch.bincount(cols[fired], minlength=n)
    else:  # every kept pair fired; with no AuxK pairs the CSC counts are exactly these
        counts = ccol.diff() if tab_cols is cols else torch.bincount(cols, minlength=n)
    lam = 0.0 if recipe == "topk" else l1_coeff
    loss = mse + lam * l1 + aux_coeff * aux_loss
    assert all(p.grad.is_contiguous() for p in (W_enc, b_enc, W_dec, b_dec))  # see _Member
    return StepStats(loss=loss, mse=mse, l1=l1, aux=aux_loss, fire_counts=counts, sparse=True)


def _dense_relu_step(sae, x, xbar, xbar_mm, W_enc_mm, b_enc_mm, pre0, chunk, recipe, l1_coeff, c_feat,
                     dec_norm, inv, mm_dtype, bufs) -> StepStats:
    """Dense fallback (many features active): the six GEMMs of a plain step, chunked over rows.

    ``pre0``: the first chunk's pre-activations, already computed. Column sums are GEMVs with a
    ones vector and the ReLU mask is a 0/1 float array: reductions of bool arrays over the batch
    were ~20x slower than a GEMV on this CPU.
    """
    W_enc, b_enc, W_dec, b_dec = sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec
    dev = W_enc.device
    B, d = x.shape
    n = sae.n_features
    low = mm_dtype != torch.float32
    W_dec_mm = W_dec.to(mm_dtype) if low else W_dec
    grad_buf = bufs.get("G", (chunk, n), mm_dtype)  # [chunk, n] dLoss/dpre
    mask_buf = bufs.get("maskF", (chunk, n), mm_dtype)  # [chunk, n] 1.0 where pre > 0
    ones = torch.ones(chunk, device=dev)
    counts = torch.zeros(n, device=dev)
    f_sum = torch.zeros(n, device=dev)
    sq_sum = torch.zeros((), device=dev)
    db_enc = b_enc.grad.zero_()
    g_sum = torch.zeros(d, device=dev)

    def colsum(a: torch.Tensor) -> torch.Tensor:  # [r, n] -> [n] in fp32
        return torch.mv(a.t(), ones[: a.shape[0]]) if not low else a.sum(0, dtype=torch.float32)

    for s in range(0, B, chunk):
        e = min(B, s + chunk)
        r = e - s
        if s == 0:
            pre = pre0
        else:
            pre = torch.addmm(b_enc_mm, xbar_mm[s:e], W_enc_mm, out=bufs.get("pre", (chunk, n), mm_dtype)[:r])
        mask = torch.gt(pre, 0, out=mask_buf[:r])
        counts += colsum(mask)
        f = pre.relu_()  # [r, n]
        f_sum += colsum(f)
        if low:
            err = (f @ W_dec_mm).float().sub_(xbar[s:e])  # [r, d] x_hat - x
        else:
            err = torch.addmm(xbar[s:e], f, W_dec, beta=-1.0)  # [r, d] f @ W_dec - x_bar = x_hat - x
        sq_sum += torch.dot(err.view(-1), err.view(-1))
        g = err.mul_(inv)  # [r, d] dLoss/dx_hat
        g_sum += g.sum(0)
        g_mm = g.to(mm_dtype) if low else g
        G = torch.mm(g_mm, W_dec_mm.t(), out=grad_buf[:r])  # [r, n] dLoss/df
        if isinstance(c_feat, torch.Tensor):
            G.add_(c_feat.to(G.dtype))
        elif c_feat:
            G.add_(c_feat)
        G.mul_(mask)  # ReLU backward
        db_enc += colsum(G)
        if low:
            # bf16 GEMMs give bf16 gradients (as under autocast); they are accumulated in fp32.
            dW_dec, dW_enc = f.t() @ g_mm, xbar_mm[s:e].t() @ G  # [n, d], [d, n]
            if s == 0:
                W_dec.grad.copy_(dW_dec)
                W_enc.grad.copy_(dW_enc)
            else:
                W_dec.grad.add_(dW_dec)
                W_enc.grad.add_(dW_enc)
        else:  # in-place addmm keeps the gradients' contiguous layout (see _Member)
            W_dec.grad.addmm_(f.t(), g, beta=0.0 if s == 0 else 1.0)
            W_enc.grad.addmm_(xbar[s:e].t(), G, beta=0.0 if s == 0 else 1.0)
    torch.addmv(g_sum, W_enc, db_enc, alpha=-1.0, out=b_dec.grad)
    mse = sq_sum / (B * d)
    if dec_norm is not None:
        l1 = torch.dot(f_sum, dec_norm) / B
        W_dec.grad.addcmul_(W_dec, (f_sum * (l1_coeff / B) / dec_norm.clamp_min(1e-12)).unsqueeze(1))
    else:
        l1 = f_sum.sum() / B
    loss = mse + l1_coeff * l1
    assert all(p.grad.is_contiguous() for p in (W_enc, b_enc, W_dec, b_dec))  # see _Member
    return StepStats(loss=loss, mse=mse, l1=l1, aux=torch.zeros((), device=dev),
                     fire_counts=counts.round().long(), sparse=False)


# ---------------------------------------------------------------------------------------------
# Per-dictionary training state
# ---------------------------------------------------------------------------------------------
class _Member:
    """One dictionary of the family with its optimiser, firing statistics and logs."""

    def __init__(self, sae: SparseAutoencoder, name: str, cfg: TrainerConfig, device: torch.device) -> None:
        self.sae = sae
        self.name = name
        self.cfg = cfg
        n = sae.n_features
        self.params = {p: getattr(sae, p) for p in _PARAMS}
        with torch.no_grad():
            for p in self.params.values():
                # torch's fused CPU Adam walks parameter, gradient and moments as flat memory and
                # ignores strides, so every one of them must be contiguous.
                if not p.is_contiguous():
                    p.data = p.data.contiguous()
                if p.grad is not None and not p.grad.is_contiguous():
                    p.grad = p.grad.contiguous()
        fused = device.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(list(self.params.values()), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                    eps=cfg.adam_eps, fused=fused or None)
        self.steps_since_fired = torch.zeros(n, dtype=torch.long, device=device)
        self.window_counts = torch.zeros(n, dtype=torch.long, device=device)  # current window
        self.window_tokens = 0
        self.last_window_counts = torch.zeros(n, dtype=torch.long, device=device)  # last full window
        self.last_window_tokens = 0
        self.tokens_seen = 0
        self.log: dict[str, list] = {"step": [], "loss": [], "mse": [], "l1": [], "aux": [], "l0": [], "sparse": []}
        self.resamples: list[dict[str, int]] = []
        self.buffers = _Buffers(device)
        self.last: StepStats | None = None

    # -- optimiser state as plain tensors keyed by parameter name
    def optim_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for pname, p in self.params.items():
            st = self.opt.state.get(p)
            if not st:
                continue
            out[f"{pname}.exp_avg"] = st["exp_avg"]
            out[f"{pname}.exp_avg_sq"] = st["exp_avg_sq"]
            out[f"{pname}.step"] = torch.as_tensor(st["step"]).reshape(1).float()
        return out

    def load_optim_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for pname, p in self.params.items():
            if f"{pname}.exp_avg" not in tensors:
                continue
            step = tensors[f"{pname}.step"].reshape(()).to(p.device)
            self.opt.state[p] = {
                "step": step.clone(),
                "exp_avg": tensors[f"{pname}.exp_avg"].to(p.device).clone(),
                "exp_avg_sq": tensors[f"{pname}.exp_avg_sq"].to(p.device).clone(),
            }

    def reset_moments(self, feats: torch.Tensor) -> None:
        """Zero Adam's moments of the rows/columns of features ``feats``."""
        for pname, p in self.params.items():
            st = self.opt.state.get(p)
            if not st or pname == "b_dec":
                continue
            for key in ("exp_avg", "exp_avg_sq"):
                if pname == "W_enc":
                    st[key][:, feats] = 0
                else:
                    st[key][feats] = 0

    def stats_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "steps_since_fired": self.steps_since_fired,
            "window_counts": self.window_counts,
            "last_window_counts": self.last_window_counts,
        }

    def density_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "last_window_counts": self.last_window_counts,
            "last_window_tokens": torch.tensor([self.last_window_tokens], dtype=torch.long),
            "window_counts": self.window_counts,
            "window_tokens": torch.tensor([self.window_tokens], dtype=torch.long),
        }

    def state_json(self, step: int) -> dict[str, Any]:
        return {
            "format_version": TRAINER_FORMAT_VERSION,
            "name": self.name,
            "step": step,
            "n_features": self.sae.n_features,
            "tokens_seen": self.tokens_seen,
            "window_tokens": self.window_tokens,
            "last_window_tokens": self.last_window_tokens,
            # All randomness is drawn from generators seeded by _mix(seed, step, ...), so the seed
            # and the step are the whole RNG state.
            "rng": {"seed": self.cfg.seed, "sae_seed": self.sae.cfg.seed, "scheme": "blake2b(seed, step, ...)"},
            "log": self.log,
            "resamples": self.resamples,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "n_features": self.sae.n_features,
            "tokens_seen": self.tokens_seen,
            "log": self.log,
            "resamples": self.resamples,
            "dead": int((self.steps_since_fired >= self.cfg.resolved_dead_window).sum()),
            "last_window_tokens": self.last_window_tokens,
        }


def _member_names(saes: list[SparseAutoencoder]) -> list[str]:
    sizes = [s.n_features for s in saes]
    names = []
    for s in saes:
        if sizes.count(s.n_features) == 1:
            names.append(f"sae_{s.n_features}")
        else:
            names.append(f"sae_{s.n_features}_seed{s.cfg.seed}")
    if len(set(names)) != len(names):
        raise ValueError(f"train_family: dictionaries must differ in n_features or seed, got names {names}")
    return names


# ---------------------------------------------------------------------------------------------
# Resampling (paper recipe)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _resample(m: _Member, source: ActivationSource, step: int, cfg: TrainerConfig, device: torch.device) -> dict:
    sae = m.sae
    window = min(cfg.resolved_dead_window, step)
    dead = (m.steps_since_fired >= window).nonzero().squeeze(1)
    record = {"step": step, "dead_before": int(dead.numel()), "n_resampled": 0, "dead_after": int(dead.numel())}
    if dead.numel() == 0:
        return record
    X = _sample_inputs(source, cfg.resample_n_inputs, step, device)  # [M, d]
    loss = torch.empty(X.shape[0], device=device)
    rows = max(1, cfg.chunk_elems // sae.n_features)  # bounds the [rows, n] activations in memory
    for s in range(0, X.shape[0], rows):
        xb = X[s:s + rows]
        loss[s:s + xb.shape[0]] = (sae(xb) - xb).pow(2).sum(1)  # [b] squared reconstruction error
    weights = loss.pow(2).double()  # paper: probability proportional to the loss squared
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)
    gen = torch.Generator(device=weights.device).manual_seed(_mix(cfg.seed, step, sae.n_features, sae.cfg.seed, 1))
    n_draw = dead.numel()
    pick = torch.multinomial(weights, n_draw, replacement=n_draw > X.shape[0], generator=gen)
    v = X.index_select(0, pick) - sae.b_dec  # [n_dead, d]
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    live = torch.ones(sae.n_features, dtype=torch.bool, device=device)
    live[dead] = False
    enc_norm = sae.W_enc[:, live].norm(dim=0).mean() if live.any() else torch.tensor(1.0, device=device)
    sae.W_dec[dead] = v
    sae.W_enc[:, dead] = (v * (0.2 * enc_norm)).t()
    sae.b_enc[dead] = 0
    m.reset_moments(dead)
    m.steps_since_fired[dead] = 0
    # Dead after: resampled features that still fire on none of the scored inputs.
    fires = torch.zeros(dead.numel(), dtype=torch.bool, device=device)
    W_sub, b_sub = sae.W_enc[:, dead], sae.b_enc[dead]
    for s in range(0, X.shape[0], source.batch_size):
        fires |= (((X[s:s + source.batch_size] - sae.b_dec) @ W_sub + b_sub) > 0).any(0)
    record.update(n_resampled=int(dead.numel()), dead_after=int((~fires).sum()))
    return record


# ---------------------------------------------------------------------------------------------
# Checkpoints and snapshots
# ---------------------------------------------------------------------------------------------
def _write_member(m: _Member, folder: Path, step: int, with_training_state: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    m.sae.save(folder)
    atomic_save_tensors(folder / "density.safetensors", m.density_tensors())
    if with_training_state:
        atomic_save_tensors(folder / "optimizer.safetensors", m.optim_tensors())
        atomic_save_tensors(folder / "stats.safetensors", m.stats_tensors())
        atomic_write_json(folder / "state.json", m.state_json(step))  # last: marks the folder complete


def _save_checkpoint(out_dir: Path, step: int, members: list[_Member], cfg: TrainerConfig,
                     elapsed_s: float = 0.0) -> None:
    folder = out_dir / f"checkpoint_step{step:09d}"
    if folder.exists():
        shutil.rmtree(folder)
    for m in members:
        _write_member(m, folder / m.name, step, with_training_state=True)
    atomic_write_json(folder / "family.json", {"step": step, "names": [m.name for m in members],
                                               "trainer_config": cfg.to_dict(), "elapsed_s": elapsed_s})
    # The pointer is written last and atomically: a crash at any point leaves the previous
    # checkpoint in force.
    atomic_write_json(out_dir / CHECKPOINT_POINTER, {"step": step, "folder": folder.name,
                                                     "format_version": TRAINER_FORMAT_VERSION})
    for old in out_dir.glob("checkpoint_step*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(out_dir: Path, members: list[_Member], cfg: TrainerConfig) -> tuple[int, float]:
    """Restore every member from ``out_dir``'s checkpoint; returns (step, training seconds so far)."""
    pointer = json.loads((out_dir / CHECKPOINT_POINTER).read_text())
    folder = out_dir / pointer["folder"]
    family = json.loads((folder / "family.json").read_text())
    names = [m.name for m in members]
    if family["names"] != names:
        raise ValueError(f"{folder}: checkpoint holds dictionaries {family['names']}, this family is {names}")
    saved = TrainerConfig.from_dict(family["trainer_config"])
    if saved != cfg:
        diff = sorted(k for k, v in saved.to_dict().items() if cfg.to_dict()[k] != v)
        raise ValueError(f"{folder}: checkpoint was trained with a different TrainerConfig (fields {diff})")
    step = int(pointer["step"])
    for m in members:
        sub = folder / m.name
        state = json.loads((sub / "state.json").read_text())
        if state["step"] != step:
            raise ValueError(f"{sub}: state step {state['step']} != checkpoint step {step}")
        loaded = SparseAutoencoder.load(sub, expect_d_in=m.sae.d_in)
        if loaded.cfg != m.sae.cfg:
            raise ValueError(f"{sub}: checkpoint dictionary config {loaded.cfg} != given {m.sae.cfg}")
        with torch.no_grad():
            for p in _PARAMS:
                getattr(m.sae, p).copy_(getattr(loaded, p))
        m.load_optim_tensors(load_file(str(sub / "optimizer.safetensors")))
        stats = load_file(str(sub / "stats.safetensors"))
        dev = m.steps_since_fired.device
        m.steps_since_fired = stats["steps_since_fired"].to(dev)
        m.window_counts = stats["window_counts"].to(dev)
        m.last_window_counts = stats["last_window_counts"].to(dev)
        m.tokens_seen = int(state["tokens_seen"])
        m.window_tokens = int(state["window_tokens"])
        m.last_window_tokens = int(state["last_window_tokens"])
        m.log = state["log"]
        m.resamples = state["resamples"]
    return step, float(family.get("elapsed_s", 0.0))


# ---------------------------------------------------------------------------------------------
# The family trainer
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _init_fresh(members: list[_Member], source: ActivationSource, cfg: TrainerConfig, device: torch.device) -> None:
    sample = _sample_inputs(source, 16384, 0, device)  # [M, d], the first batches
    if cfg.recipe == "l1_decnorm":
        centre = sample.mean(0)
    else:
        centre = geometric_median(sample)
    for m in members:
        m.sae.b_dec.copy_(centre)
        if cfg.recipe == "l1_decnorm":
            # April 2024 update: decoder rows of norm 0.1, encoder = decoder transpose.
            m.sae.W_dec.mul_(0.1 / m.sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            m.sae.W_enc.copy_(m.sae.W_dec.t())


@runtime_checkable
class StepReducer(Protocol):
    """Data parallelism over processes (``splitkit.distributed``): each process runs ``sae_step`` on
    its share of the batch, then the gradients and statistics are combined before the optimiser
    step, so every process takes the same step. None (the default) means one process, whole batch."""

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of the batch ``x [B, d]`` -> ``[B / world, d]``."""
        ...

    def reduce(self, sae: SparseAutoencoder, st: StepStats) -> StepStats:
        """Average ``p.grad`` of the four parameters over processes in place; return the statistics
        of the whole batch (loss terms averaged, ``fire_counts [n]`` summed)."""
        ...


@torch.no_grad()
def _train_member_step(m: _Member, x: torch.Tensor, step: int, cfg: TrainerConfig, mm_dtype: torch.dtype,
                       reducer: StepReducer | None = None) -> None:
    """One step of one dictionary on batch ``x [B, d]`` (the whole batch, also under a reducer)."""
    sae = m.sae
    dead_mask = None
    if cfg.recipe == "topk":
        dead_mask = m.steps_since_fired >= cfg.resolved_dead_window
    st = sae_step(sae, x if reducer is None else reducer.shard(x), recipe=cfg.recipe, l1_coeff=cfg.l1_at(step),
                  mm_dtype=mm_dtype, sparse_density_max=cfg.sparse_density_max, chunk_elems=cfg.chunk_elems,
                  dead_mask=dead_mask, aux_k=cfg.aux_k, aux_coeff=cfg.aux_coeff, buffers=m.buffers)
    if reducer is not None:
        st = reducer.reduce(sae, st)  # whole-batch gradients and counts, identical on every process
    if cfg.recipe in ("paper", "topk"):
        # Unit-norm decoder rows: drop the gradient component along each row (fp32: it is the small
        # difference of two nearly equal quantities), step, then re-normalise.
        W, gW = sae.W_dec, sae.W_dec.grad
        along = torch.bmm(gW.unsqueeze(1), W.unsqueeze(2)).view(-1, 1)  # [n, 1] row-wise dot, no temp
        gW.addcmul_(W, along, value=-1.0)
    for group in m.opt.param_groups:
        group["lr"] = cfg.lr_at(step)
    m.opt.step()
    if cfg.recipe in ("paper", "topk"):
        sae.normalize_decoder_()
    # Firing statistics.
    fired = st.fire_counts > 0
    m.steps_since_fired.add_(1).masked_fill_(fired, 0)
    m.window_counts += st.fire_counts
    m.window_tokens += x.shape[0]
    m.tokens_seen += x.shape[0]
    if (step + 1) % cfg.resolved_dead_window == 0:
        m.last_window_counts = m.window_counts.clone()
        m.last_window_tokens = m.window_tokens
        m.window_counts.zero_()
        m.window_tokens = 0
    m.last = st
    if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps:
        m.log["step"].append(step + 1)
        m.log["loss"].append(float(st.loss))
        m.log["mse"].append(float(st.mse))
        m.log["l1"].append(float(st.l1))
        m.log["aux"].append(float(st.aux))
        m.log["l0"].append(float(st.fire_counts.sum()) / x.shape[0])
        m.log["sparse"].append(bool(st.sparse))


class FamilyTrainer:
    """The loop of ``train_family``, one step at a time (``train_step``), for callers that time or
    interleave steps. Construction validates, moves the dictionaries to ``device``, and resumes from
    ``out_dir``'s checkpoint when there is one (else initialises b_dec etc. for the recipe).
    ``reducer``: data parallelism over processes (:class:`StepReducer`); None trains here alone."""

    def __init__(self, saes: list[SparseAutoencoder], source: ActivationSource, cfg: TrainerConfig,
                 out_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 reducer: StepReducer | None = None) -> None:
        if not saes:
            raise ValueError("train_family: saes is empty; pass at least one SparseAutoencoder")
        if not isinstance(source, ActivationSource):
            raise ValueError("train_family: source must have d, batch_size, n_tokens and get_batch(step)")
        d_ins = sorted({s.d_in for s in saes})
        if d_ins != [source.d]:
            raise ValueError(f"train_family: dictionaries have d_in {d_ins}, source has d={source.d}")
        for s in saes:
            if cfg.recipe == "topk" and s.cfg.architecture != "topk":
                raise ValueError(f"train_family: recipe 'topk' needs topk dictionaries, got {s.cfg.architecture!r}")
            if cfg.recipe != "topk" and s.cfg.architecture != "relu":
                raise ValueError(f"train_family: recipe {cfg.recipe!r} needs relu dictionaries, "
                                 f"got {s.cfg.architecture!r}")
            if cfg.recipe == "topk" and cfg.k is not None and s.cfg.k != cfg.k:
                raise ValueError(f"train_family: TrainerConfig.k={cfg.k} but a dictionary has k={s.cfg.k}")
        if cfg.snapshot_steps and out_dir is None:
            raise ValueError("train_family: snapshot_steps need an out_dir to write to")
        self.cfg = cfg
        self.source = source
        self.device = torch.device(device)
        self.mm_dtype = resolve_matmul_dtype(cfg.matmul_dtype, self.device)
        names = _member_names(saes)
        for s in saes:
            s.to(self.device)
        self.members = [_Member(s, name, cfg, self.device) for s, name in zip(saes, names)]
        self.out = Path(out_dir) if out_dir is not None else None
        self.step = 0  # steps done so far = index of the next batch
        self.elapsed_before = 0.0  # training seconds of earlier sessions (resumed runs)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            if (self.out / CHECKPOINT_POINTER).is_file():
                self.step, self.elapsed_before = _load_checkpoint(self.out, self.members, cfg)
        self._t_start = time.perf_counter()
        if self.step == 0:
            _init_fresh(self.members, source, cfg, self.device)
        self._resample_at = set(cfg.resolved_resample_steps)
        self._snapshots = set(cfg.snapshot_steps)
        self.tokens_run = 0  # tokens trained in this session (not counting a resumed prefix)
        self.reducer = reducer  # data parallelism (splitkit.distributed); None: this process alone

    @torch.no_grad()
    def train_step(self, write: Any = None) -> None:
        """Resample if due, fetch batch ``self.step``, step every dictionary on it, then snapshot /
        checkpoint if due. ``write``: a callable for messages (e.g. ``tqdm.write``)."""
        cfg, step = self.cfg, self.step
        if step >= cfg.n_steps:
            raise ValueError(f"FamilyTrainer.train_step: all n_steps={cfg.n_steps} steps are done")
        if step in self._resample_at:
            for m in self.members:
                rec = _resample(m, self.source, step, cfg, self.device)
                m.resamples.append(rec)
                if write is not None:
                    write(f"step {step} {m.name}: resampled {rec['n_resampled']}, dead {rec['dead_before']} "
                          f"-> {rec['dead_after']}")
        x = self.source.get_batch(step).to(device=self.device, dtype=torch.float32)  # [B, d], fetched once
        for m in self.members:
            _train_member_step(m, x, step, cfg, self.mm_dtype, self.reducer)
        self.tokens_run += x.shape[0]
        self.step = done = step + 1
        if self.out is not None:
            if done in self._snapshots:
                snap = self.out / "snapshots" / f"step_{done}"
                for m in self.members:
                    _write_member(m, snap / m.name, done, with_training_state=False)
                atomic_write_json(snap / "snapshot.json", {"step": done, "tokens": self.members[0].tokens_seen,
                                                           "elapsed_s": self.elapsed_total})
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.n_steps:
                _save_checkpoint(self.out, done, self.members, cfg, self.elapsed_total)

    @property
    def elapsed_total(self) -> float:
        """Training wall seconds from the first step, summed over resumed sessions."""
        return self.elapsed_before + time.perf_counter() - self._t_start

    def summary(self, elapsed_s: float = 0.0) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.members[0].tokens_seen,
            "elapsed_s": elapsed_s,
            "elapsed_total_s": self.elapsed_total,
            "tokens_per_s": self.tokens_run / elapsed_s if elapsed_s > 0 else 0.0,
            "matmul_dtype": str(self.mm_dtype).replace("torch.", ""),
            "saes": {m.name: m.summary() for m in self.members},
        }

    def finish(self, elapsed_s: float = 0.0) -> dict[str, Any]:
        """Write ``final/`` and ``train_log.json`` (with an out_dir) and return the summary."""
        result = self.summary(elapsed_s)
        if self.out is not None:
            for m in self.members:
                _write_member(m, self.out / "final" / m.name, self.step, with_training_state=False)
            atomic_write_json(self.out / "train_log.json", result)
        return result


def train_family(saes: list[SparseAutoencoder], source: ActivationSource, cfg: TrainerConfig,
                 out_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 progress: bool = True) -> dict[str, Any]:
    """Train every dictionary in ``saes`` (same ``d_in``, any sizes) on the same batches, in place.

    Batch ``step`` is fetched once from ``source`` and every dictionary takes one step on it.
    With ``out_dir``: checkpoints every ``cfg.checkpoint_every`` steps and at the end (resumed
    automatically when ``out_dir`` holds one), snapshots at ``cfg.snapshot_steps`` in
    ``out_dir/snapshots/step_{k}/sae_{n}/``, and the trained dictionaries with their firing counts
    in ``out_dir/final/sae_{n}/``. Returns ``{"step", "tokens", "elapsed_s", "tokens_per_s",
    "matmul_dtype", "saes": {name: {"n_features", "tokens_seen", "log": {step, loss, mse, l1, aux,
    l0, sparse}, "resamples": [{step, dead_before, n_resampled, dead_after}], "dead",
    "last_window_tokens"}}}`` (names: ``sae_{n}``, or ``sae_{n}_seed{s}`` when sizes repeat).
    """
    trainer = FamilyTrainer(saes, source, cfg, out_dir=out_dir, device=device)
    return trainer.finish(run_trainer(trainer, progress))


def run_trainer(trainer: FamilyTrainer, progress: bool = True, desc: str | None = None) -> float:
    """Step ``trainer`` until ``n_steps`` with a progress bar; returns this session's wall seconds."""
    cfg, members = trainer.cfg, trainer.members
    bar = tqdm(total=cfg.n_steps, initial=trainer.step, disable=not progress, unit="step", dynamic_ncols=True,
               desc=desc)
    t0 = time.perf_counter()
    while trainer.step < cfg.n_steps:
        trainer.train_step(write=bar.write if progress else None)
        done = trainer.step
        if progress and (done % cfg.log_every == 0 or done == cfg.n_steps):
            rate = trainer.tokens_run / max(time.perf_counter() - t0, 1e-9)
            losses = " ".join(f"{m.last.loss.item():.4g}" for m in members)
            l0s = " ".join(f"{m.last.fire_counts.sum().item() / trainer.source.batch_size:.1f}" for m in members)
            bar.set_postfix_str(f"tok/s={rate:,.0f} loss=[{losses}] L0=[{l0s}]")
        bar.update(1)
    bar.close()
    return time.perf_counter() - t0
