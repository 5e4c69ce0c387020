"""The summary's dictionary blocks: in-dictionary twins (activation and decoder) and the decoder-cosine
match across runs (the yardstick of Paulo and Belrose), each against its baseline."""

from __future__ import annotations

import numpy as np

from .side import Side
from .stats import _med


def redundancy_block(acts, W_dec, counts: np.ndarray, mask: np.ndarray, n_twin_tokens: int, threshold: float = 0.9,
                     k: int = 8):
    """In-dictionary twin statistics of one basis (``redundancy.redundancy_summary`` keys) over the first
    ``n_twin_tokens`` tokens of ``acts [n_tokens, n]``, the shares over the features of ``mask [n]``;
    with the activation clusters at ``threshold`` (representatives by full-set firing ``counts``).
    Returns ``(summary, clusters)``."""
    from .. import redundancy as R

    sub = acts[:n_twin_tokens]
    tw = R.activation_twins(sub, k=k)
    cl = R.twin_clusters(tw, threshold, counts)
    t = f"{threshold:g}"
    use = tw.alive & mask
    v = tw.twin_value[use]
    v = v[np.isfinite(v)]
    out = {"n_features": int(acts.shape[1]), "n_counted": int(mask.sum()), "threshold": float(threshold), "k": int(k),
           "n_twin_tokens": int(sub.shape[0]),
           "twin_median_act_corr": _med(v), f"twin_share_act_{t}": float((v > threshold).mean()) if v.size else None,
           f"n_clusters_act_{t}": cl.n_clusters, f"n_clusters_act_{t}_counted": int(np.unique(cl.labels[mask & (cl.labels >= 0)]).size),
           "n_alive_act": int(tw.alive.sum()), "n_saturated_act": cl.n_saturated,
           "largest_cluster_act": int(cl.sizes.max()) if cl.n_clusters else 0}
    if W_dec is not None:
        dt = R.decoder_twins(W_dec, k=k)
        dcl = R.twin_clusters(dt, threshold, counts)
        dv = dt.twin_value[dt.alive & mask]
        dv = dv[np.isfinite(dv)]
        out.update({"twin_median_dec_cos": _med(dv), f"twin_share_dec_{t}": float((dv > threshold).mean()) if dv.size else None,
                    f"n_clusters_dec_{t}": dcl.n_clusters, "n_alive_dec": int(dt.alive.sum()),
                    "n_saturated_dec": dcl.n_saturated})
    return out, cl


def decoder_block(a: Side, b: Side, neurons_alive_a: np.ndarray, neurons_alive_b: np.ndarray, seed: int = 0) -> dict | None:
    """The decoder-cosine yardstick of runs A and B (``decoder_matching.decoder_yardstick`` at its
    threshold, 0.7): A's decoder rows mapped into B's neuron basis by the least-squares map fitted on
    the first ``decoder_matching.MAP_TOKENS`` analysis tokens, with the neuron baseline and a random
    decoder's chance level; None without both decoders."""
    from .. import decoder_matching as D

    if a.W_dec is None or b.W_dec is None:
        return None
    m = min(a.neuron_acts.shape[0], D.MAP_TOKENS)
    M, r2 = D.neuron_basis_map(a.neuron_acts[:m], b.neuron_acts[:m])
    out = D.decoder_yardstick(a.W_dec, b.W_dec, M, neurons_alive_a=neurons_alive_a, neurons_alive_b=neurons_alive_b,
                              map_r2=r2, threshold=D.THRESHOLD, seed=seed)
    out["map_tokens"] = int(m)
    return out
