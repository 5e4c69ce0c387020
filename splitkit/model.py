"""The one-layer transformer of the paper: embed -> attention -> MLP (512 ReLU neurons) -> unembed.

Pre-layer-norm, learned positions, untied unembedding (choices the paper leaves open; see
docs/architecture.md). The MLP's hidden layer is the one dictionaries are trained on, so the model
exposes it three ways: read it (:meth:`Transformer.mlp_acts`), replace it (``mlp_edit`` returning a
new tensor, e.g. an SAE reconstruction) or add to it (``mlp_edit`` returning ``acts + v``, steering).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig

MLPEdit = Callable[[torch.Tensor], torch.Tensor]  # acts [B, T, d_mlp] -> acts [B, T, d_mlp]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, H, T, C/H)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The 512 neurons: ``[B, T, d_model] -> [B, T, d_mlp]``."""
        return F.relu(self.fc_in(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.apply(self._init)
        # residual-writing projections start small so the residual stream isn't swamped (GPT-2's scaled init)
        for lin in (self.attn.proj, self.mlp.fc_out):
            nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def _pre_mlp(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence length {T} exceeds the model's context {self.cfg.n_ctx}")
        pos = torch.arange(T, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        return x + self.attn(self.ln_attn(x))

    def mlp_acts(self, idx: torch.Tensor) -> torch.Tensor:
        """MLP neuron activations ``[B, T, d_mlp]`` for tokens ``idx: [B, T]`` (stops before the unembedding)."""
        return self.mlp.hidden(self.ln_mlp(self._pre_mlp(idx)))

    def forward(self, idx: torch.Tensor, mlp_edit: MLPEdit | None = None) -> torch.Tensor:
        """Logits ``[B, T, vocab]``; ``mlp_edit`` maps the neuron activations to the ones used downstream."""
        x = self._pre_mlp(idx)
        h = self.mlp.hidden(self.ln_mlp(x))
        if mlp_edit is not None:
            h = mlp_edit(h)
        x = x + self.mlp.fc_out(h.to(x.dtype))
        return self.unembed(self.ln_final(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, mlp_edit: MLPEdit | None = None) -> torch.Tensor:
        logits = self(idx, mlp_edit=mlp_edit)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    # Weights that define the direct logit path of an MLP-neuron direction (used by the logit-effect
    # analyses): neuron -> fc_out -> final LN -> unembedding.
    def direct_path(self) -> dict[str, torch.Tensor]:
        return {
            "W_out": self.mlp.fc_out.weight.detach().T.contiguous(),  # [d_mlp, d_model]
            "ln_scale": self.ln_final.weight.detach().clone(),  # [d_model]
            "W_U": self.unembed.weight.detach().T.contiguous(),  # [d_model, vocab]
        }
