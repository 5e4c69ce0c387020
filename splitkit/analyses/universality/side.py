"""What the universality analysis takes from one run (A or B)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Side:
    """Everything the analysis needs from one run (A or B)."""

    feature_acts: object  # scipy.sparse.csr_matrix [n_tokens, n_features]
    neuron_acts: object  # scipy.sparse.csr_matrix [n_tokens, d_mlp] float32 (or a dense ndarray)
    logit_effects: np.ndarray  # [n_features, vocab] float32 (the cached ``effects`` stage)
    neuron_logit_effects: np.ndarray  # [d_mlp, vocab] float32
    sae_stats: dict
    lm_summary: dict
    sae_id: str
    W_dec: np.ndarray | None = None  # [n_features, d_mlp] decoder rows (decoder twins); None: skipped
