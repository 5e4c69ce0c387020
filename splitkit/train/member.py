"""Per-dictionary training state: optimiser, firing statistics, logs, and its step within the family."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ..sae import SparseAutoencoder
from .config import TrainerConfig
from .l0control import L0Controller
from .step import Buffers, StepStats

PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")
TRAINER_FORMAT_VERSION = 1


class Member:
    """One dictionary of the family with its optimiser, firing statistics and logs."""

    def __init__(self, sae: SparseAutoencoder, name: str, cfg: TrainerConfig, device: torch.device) -> None:
        self.sae = sae
        self.name = name
        self.cfg = cfg
        n = sae.n_features
        self.params = {p: getattr(sae, p) for p in PARAMS}
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
        self.buffers = Buffers(device)
        self.last: StepStats | None = None
        self.l0ctl = L0Controller.for_config(cfg)  # None unless cfg.target_l0: lambda follows its schedule

    def l1_at(self, step: int) -> float:
        """This member's lambda at ``step``: the schedule's, times its L0 controller's factor."""
        lam = self.cfg.l1_at(step)
        return lam if self.l0ctl is None else lam * self.l0ctl.scale

    def l0_record(self) -> dict[str, Any] | None:
        """The L0 controller's record for the saved dictionary (None without one)."""
        return None if self.l0ctl is None else self.l0ctl.record(self.cfg.l1_coeff)

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
            # All randomness is drawn from generators seeded by mix_seed(seed, step, ...), so the seed
            # and the step are the whole RNG state.
            "rng": {"seed": self.cfg.seed, "sae_seed": self.sae.cfg.seed, "scheme": "blake2b(seed, step, ...)"},
            "log": self.log,
            "resamples": self.resamples,
            **({"l0_control": self.l0ctl.state()} if self.l0ctl is not None else {}),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "n_features": self.sae.n_features,
            "tokens_seen": self.tokens_seen,
            "log": self.log,
            "resamples": self.resamples,
            "dead": int((self.steps_since_fired >= self.cfg.resolved_dead_window).sum()),
            "last_window_tokens": self.last_window_tokens,
            **({"l0_control": self.l0_record()} if self.l0ctl is not None else {}),
        }


def member_names(saes: list[SparseAutoencoder]) -> list[str]:
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
def train_member_step(m: Member, x: torch.Tensor, step: int, cfg: TrainerConfig, mm_dtype: torch.dtype,
                      reducer: StepReducer | None = None) -> None:
    """One step of one dictionary on batch ``x [B, d]`` (the whole batch, also under a reducer)."""
    sae = m.sae
    recipe = cfg.recipe_object
    dead_mask = recipe.aux_latents(m.steps_since_fired, cfg.resolved_dead_window)
    lam = m.l1_at(step)
    st = recipe.step(sae, x if reducer is None else reducer.shard(x), cfg, l1_coeff=lam,
                     mm_dtype=mm_dtype, dead_mask=dead_mask, buffers=m.buffers)
    if reducer is not None:
        st = reducer.reduce(sae, st)  # whole-batch gradients and counts, identical on every process
    recipe.constrain_gradient(sae)
    for group in m.opt.param_groups:
        group["lr"] = cfg.lr_at(step)
    m.opt.step()
    recipe.constrain_weights(sae)
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
    if m.l0ctl is not None:
        m.l0ctl.observe(step, float(st.fire_counts.sum()) / x.shape[0])
    if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps:
        m.log["step"].append(step + 1)
        m.log["loss"].append(float(st.loss))
        m.log["mse"].append(float(st.mse))
        m.log["l1"].append(float(st.l1))
        m.log["aux"].append(float(st.aux))
        m.log["l0"].append(float(st.fire_counts.sum()) / x.shape[0])
        m.log["sparse"].append(bool(st.sparse))
        if m.l0ctl is not None:  # the steered lambda of the logged step
            m.log.setdefault("lambda", []).append(lam)

