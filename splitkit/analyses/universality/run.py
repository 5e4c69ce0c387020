"""The study's entry point: load both runs' cached stages and run :func:`analyse` on them."""

from __future__ import annotations

import numpy as np

from ...config import Config
from .analyse import analyse
from .side import Side

#: analysis positions over which the attribution view is also computed with the LMs' true final-LN scale
ATTR_SCALE_TOKENS = 500_000


PAPER_FIGURES = {
    "features_median_max_act_corr": 0.72,
    "neurons_median_max_act_corr": 0.46,
    "n_analysis_tokens": 41_000_000,
    "dictionary": "A/1 vs B/1 (4096 features, 8B training activations)",
}


def load_side(cfg: Config, seed: int, n: int, snapshot_step: int | None = None, progress: bool = True) -> Side:
    """Gather one run's cached artifacts (building any that are missing)."""
    from ... import pipeline as P

    fs = P.get_features(cfg, seed, n, snapshot_step, progress)
    fam = P.get_family(cfg, seed, progress)
    lm = P.get_lm(cfg, seed, progress)
    store = P.get_acts(cfg, seed, "analysis", progress)
    # neurons as CSR (~3% nonzero after the ReLU): the matcher's exact sparse path, no dense [n_tokens, 512] copy
    W_dec = fam.sae(n, snapshot_step).W_dec.detach().cpu().numpy()
    return Side(feature_acts=fs.acts(), neuron_acts=store.head_csr(), W_dec=W_dec,
                logit_effects=P.get_logit_effects(cfg, seed, n, snapshot_step, progress).matrix(),
                neuron_logit_effects=P.get_logit_effects(cfg, seed, None, progress=progress).matrix(),
                sae_stats=fs.stats, lm_summary=lm.summary, sae_id=fam.sae_id(n))


def next_tokens_of(cfg: Config, n_tokens: int) -> np.ndarray:
    """The token after each analysis position (the analysis store covers the split's first tokens in order)."""
    from ... import pipeline as P

    stream = np.asarray(P.get_tokens(cfg).tokens("analysis"))
    nxt = np.full(n_tokens, -1, dtype=np.int64)
    m = min(n_tokens, len(stream) - 1)
    nxt[:m] = stream[1 : m + 1]
    return nxt


def final_ln_inv_sigma(cfg: Config, seed: int, n_tokens: int, batch: int = 64) -> np.ndarray:
    """The final layer norm's true ``1 / sigma`` at the first ``n_tokens`` analysis positions of LM
    ``seed`` (whole ``n_ctx`` windows of the analysis split, in order, as the analysis store holds
    them): float64 ``[n]``. ``effects`` freezes this scale; the attribution view can use it exactly."""
    import torch

    from ... import pipeline as P

    model = P.get_lm(cfg, seed, False).model("cpu")
    stream = np.asarray(P.get_tokens(cfg).tokens("analysis"))
    T = model.cfg.n_ctx
    n_win = min(-(-n_tokens // T), len(stream) // T)
    got: list[torch.Tensor] = []
    ln = model.ln_final

    def hook(mod, inp):
        x = inp[0].double()
        got.append(1.0 / torch.sqrt(x.var(-1, unbiased=False) + mod.eps).reshape(-1))

    h = ln.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for w0 in range(0, n_win, batch):
                w1 = min(n_win, w0 + batch)
                win = torch.from_numpy(stream[w0 * T : w1 * T].astype(np.int64).reshape(w1 - w0, T))
                model(win)
    finally:
        h.remove()
    return torch.cat(got).numpy()[:n_tokens]


def run_universality(cfg: Config, n: int | None = None, snapshot_step: int | None = None, progress: bool = True) -> dict:
    """Build (or reuse) everything upstream for runs A and B, then :func:`analyse` them."""
    from ... import pipeline as P
    from ...features import top_tokens

    n = n or cfg.dict.sizes[0]
    a = load_side(cfg, cfg.seed_a, n, snapshot_step, progress)
    b = load_side(cfg, cfg.seed_b, n, snapshot_step, progress)
    store_a = P.get_acts(cfg, cfg.seed_a, "analysis", progress)
    store_b = P.get_acts(cfg, cfg.seed_b, "analysis", progress)
    tok_ids = np.asarray(store_a.tokens)
    if not np.array_equal(tok_ids, np.asarray(store_b.tokens)):
        raise RuntimeError("analysis stores of A and B hold different tokens; clear the cache folder 'acts'")
    # the final LN's true 1/sigma on the first analysis positions, to measure the attribution view's frozen scale
    m = min(len(tok_ids), ATTR_SCALE_TOKENS)
    inv = (final_ln_inv_sigma(cfg, cfg.seed_a, m), final_ln_inv_sigma(cfg, cfg.seed_b, m))
    res = analyse(a, b, next_tokens_of(cfg, len(tok_ids)), cfg, inv_sigma=inv)
    data = P.get_tokens(cfg)
    tok = data.tokenizer
    V = data.info["vocab_size"]
    from ...tokenizer import decode_tokens

    def names(ids):
        return [" | ".join(repr(s)[1:-1] for s in decode_tokens(tok, [i for i in row if i >= 0])) for row in ids]

    top_a = top_tokens(a.feature_acts, tok_ids, V, 3)
    top_b = top_tokens(b.feature_acts, tok_ids, V, 3)
    df = res["features"]
    df["top_tokens_a"] = names(top_a)
    bb = df["best_b"].to_numpy()
    df["top_tokens_b"] = [names([top_b[j]])[0] if j >= 0 else "" for j in bb]
    res["runs"] = {"A": {"lm": a.lm_summary, "sae": a.sae_stats, "sae_id": a.sae_id},
                   "B": {"lm": b.lm_summary, "sae": b.sae_stats, "sae_id": b.sae_id}}
    res["size"] = n
    return res
