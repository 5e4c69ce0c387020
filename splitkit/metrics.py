"""How good a dictionary is: reconstruction, sparsity, dead features, and loss recovered.

Definitions (also written beside the figures in every summary.json, see ``METRIC_DEFINITIONS``):
every average runs over all evaluation tokens at once, never as a mean of per-batch ratios.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import Transformer
from .sae import SparseAutoencoder

METRIC_DEFINITIONS = {
    "mse": "mean over evaluation tokens and the d_mlp inputs of (x - x_hat)^2 (lower is better)",
    "fvu": "sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all evaluation tokens (fraction of variance "
           "unexplained; lower is better)",
    "l0": "mean number of features with f > 0 per evaluation token; EOT/BOS positions are counted (lower is sparser)",
    "loss_recovered_zero": "(L_zero - L_sae) / (L_zero - L_orig): L_* are mean next-token losses over all "
                           "evaluation tokens with the MLP's activations replaced by the SAE reconstruction "
                           "(sae) or by zeros (zero); 1 = as good as the model (higher is better)",
    "loss_recovered_mean": "as loss_recovered_zero with the baseline replaced by mean ablation: activations set "
                           "to their mean over the dictionary's training tokens (higher is better)",
    "dead_frac": "share of features that fire on none of the n_density_tokens analysis tokens (lower is better)",
    "ultralow_frac": "share of features that fire, but on fewer than ultralow_density of the analysis tokens",
}


# From this many features on, a ReLU dictionary on the CPU is decoded from its sparse codes: the
# dense f @ W_dec costs as much as the encoder's GEMM, the sparse one L0 / n of it (half the time
# at 65,536 features). Same fp32 encoder; the decoder's sums differ only in rounding order.
SPARSE_DECODE_MIN = 8192


@torch.no_grad()
def evaluate_sae(model: Transformer, sae: SparseAutoencoder, tokens: np.ndarray, n_tokens: int,
                 mean_acts: torch.Tensor, batch_size: int = 32, device: str = "cpu",
                 sparse_decode: bool | None = None) -> dict:
    """Reconstruction and loss-recovered metrics of ``sae`` spliced into ``model`` on ``tokens``.

    ``tokens``: a token stream (the validation split); contiguous ``n_ctx`` windows covering up to
    ``n_tokens`` are used. ``mean_acts: [d_mlp]`` is the mean-ablation baseline. ``sparse_decode``
    (default: ReLU dictionaries of ``SPARSE_DECODE_MIN`` features or more, on the CPU with numba)
    decodes from CSR codes instead of the dense ``[tokens, n]`` activations.
    """
    from .features import HAVE_NUMBA, encode_sparse

    d = model.cfg.d_mlp
    if sae.d_in != d:
        raise ValueError(f"dictionary width d_in={sae.d_in} does not match the model's d_mlp={d}")
    T = model.cfg.n_ctx
    n_win = max(1, min(n_tokens // T, (len(tokens) - 1) // T))
    idx = np.arange(n_win)[:, None] * T + np.arange(T + 1)[None, :]
    model = model.to(device).eval()
    sae = sae.to(device).eval()
    mean_acts = mean_acts.to(device)
    if sparse_decode is None:
        sparse_decode = (sae.n_features >= SPARSE_DECODE_MIN and sae.cfg.architecture == "relu" and HAVE_NUMBA
                         and torch.device(device).type == "cpu")
    W_dec_np = sae.W_dec.detach().float().cpu().numpy() if sparse_decode else None
    sums = dict(sq_err=0.0, sum_x=torch.zeros(d, dtype=torch.float64, device=device), sum_x2=0.0, l0=0.0,
                orig=0.0, sae=0.0, zero=0.0, mean=0.0, n=0)

    def ce(logits, y):
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                                 reduction="sum").item()

    for i in range(0, n_win, batch_size):
        win = torch.from_numpy(np.asarray(tokens)[idx[i: i + batch_size]].astype(np.int64)).to(device)
        x_in, y = win[:, :-1], win[:, 1:]
        acts = model.mlp_acts(x_in).reshape(-1, d)
        if sparse_decode:
            F = encode_sparse(sae, acts.float().cpu().numpy())  # fp32, the fused ReLU-to-CSR kernel
            x_hat = torch.from_numpy(np.asarray(F @ W_dec_np, dtype=np.float32)).add_(sae.b_dec.detach())
            l0 = F.nnz
        else:
            f = sae.encode(acts)
            x_hat = sae.decode(f)
            l0 = float((f > 0).sum())
        sums["sq_err"] += float(((acts - x_hat) ** 2).sum())
        sums["sum_x"] += acts.double().sum(0)
        sums["sum_x2"] += float((acts.double() ** 2).sum())
        sums["l0"] += float(l0)
        shape = (x_in.shape[0], x_in.shape[1], d)
        sums["orig"] += ce(model(x_in), y)
        sums["sae"] += ce(model(x_in, mlp_edit=lambda h: x_hat.reshape(shape)), y)
        sums["zero"] += ce(model(x_in, mlp_edit=lambda h: torch.zeros_like(h)), y)
        sums["mean"] += ce(model(x_in, mlp_edit=lambda h: mean_acts.expand_as(h)), y)
        sums["n"] += y.numel()
    n = sums["n"]
    total_var = sums["sum_x2"] - float((sums["sum_x"] ** 2).sum()) / n
    L = {k: sums[k] / n for k in ("orig", "sae", "zero", "mean")}
    return {
        "n_eval_tokens": n,
        "mse": sums["sq_err"] / (n * d),
        "fvu": sums["sq_err"] / total_var,
        "l0": sums["l0"] / n,
        "loss_orig": L["orig"], "loss_sae": L["sae"], "loss_zero_ablation": L["zero"], "loss_mean_ablation": L["mean"],
        "loss_recovered_zero": (L["zero"] - L["sae"]) / (L["zero"] - L["orig"]),
        "loss_recovered_mean": (L["mean"] - L["sae"]) / (L["mean"] - L["orig"]),
        "bos_counted": True,
    }


def density_stats(counts: np.ndarray, n_tokens: int, ultralow_density: float) -> dict:
    """Dead and ultralow-density shares and the log10-density histogram from firing counts ``[n]``."""
    counts = np.asarray(counts)
    dens = counts / n_tokens
    alive = counts > 0
    ultralow = alive & (dens < ultralow_density)
    log_d = np.log10(dens[alive]) if alive.any() else np.zeros(0)
    hist, edges = np.histogram(log_d, bins=np.arange(np.floor(np.log10(1 / n_tokens)) - 0.5, 0.51, 0.25))
    return {
        "n_density_tokens": int(n_tokens),
        "ultralow_density": ultralow_density,
        "dead_frac": float((~alive).mean()),
        "ultralow_frac": float(ultralow.mean()),
        "n_dead": int((~alive).sum()),
        "n_ultralow": int(ultralow.sum()),
        "median_log10_density": float(np.median(log_d)) if len(log_d) else None,
        "log10_density_hist": {"counts": hist.tolist(), "edges": edges.round(3).tolist()},
    }
