"""Inputs drawn from the source for initialisation and resampling; the paper's resampling of dead features."""

from __future__ import annotations

import math

import torch

from .config import TrainerConfig
from .member import Member
from .source import ActivationSource, mix_seed


def sample_inputs(source: ActivationSource, n_inputs: int, around_step: int, device: torch.device) -> torch.Tensor:
    """About ``n_inputs`` rows (whole batches, at least one, at most the source) -> fp32 ``[M, d]``.

    Uses the batches just before ``around_step`` (already seen in training), or the first batches
    when there are not enough of those; all deterministic in ``around_step``.
    """
    n_inputs = min(n_inputs, source.n_tokens)
    n_batches = max(1, math.ceil(n_inputs / source.batch_size))
    start = around_step - n_batches if around_step >= n_batches else 0
    return torch.cat([source.get_batch(s).to(device=device, dtype=torch.float32)
                      for s in range(start, start + n_batches)])



@torch.no_grad()
def resample(m: Member, source: ActivationSource, step: int, cfg: TrainerConfig, device: torch.device) -> dict:
    sae = m.sae
    window = min(cfg.resolved_dead_window, step)
    dead = (m.steps_since_fired >= window).nonzero().squeeze(1)
    record = {"step": step, "dead_before": int(dead.numel()), "n_resampled": 0, "dead_after": int(dead.numel())}
    if dead.numel() == 0:
        return record
    X = sample_inputs(source, cfg.resample_n_inputs, step, device)  # [M, d]
    loss = torch.empty(X.shape[0], device=device)
    rows = max(1, cfg.chunk_elems // sae.n_features)  # bounds the [rows, n] activations in memory
    for s in range(0, X.shape[0], rows):
        xb = X[s:s + rows]
        loss[s:s + xb.shape[0]] = (sae(xb) - xb).pow(2).sum(1)  # [b] squared reconstruction error
    weights = loss.pow(2).double()  # paper: probability proportional to the loss squared
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)
    gen = torch.Generator(device=weights.device).manual_seed(mix_seed(cfg.seed, step, sae.n_features, sae.cfg.seed, 1))
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

