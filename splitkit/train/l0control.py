"""Holding L0 fixed: a controller that adapts one dictionary's lambda until its mean L0 reaches a target.

At a fixed lambda a dictionary's L0 drifts as it trains (it falls by a factor of 2-4 between 0.5M
and 8M tokens on our LMs), so comparing budgets at one lambda compares different sparsities. With
``TrainerConfig.target_l0`` set, each member of the family gets an :class:`L0Controller`: an integral
controller on log lambda driven by an exponential moving average of the batch L0,

    lambda_t = l1_at(t) * exp(u_t),   u_{t+1} = u_t + gain * clip(log ema_t - log target, +-1)

active from the end of the lambda warm-up (and not before ``start_frac`` of the run, where L0 still
reflects the initialisation) until the last ``freeze_frac`` of the run, where u is frozen so the end
state is trained at one stationary lambda. Working on log lambda and log L0 makes the gain free of
both scales (L0 ~ lambda^-a with a of order 1). Its whole state is two floats, kept in the member's
checkpoint, so a resumed run is bitwise identical; everything it reads (the batch's firing counts)
is deterministic and, under data parallelism, the whole batch's.
"""

from __future__ import annotations

import math
from typing import Any


class L0Controller:
    """Multiplicative integral control of one dictionary's lambda toward ``target`` mean L0.

    ``start`` / ``stop``: the steps ``[start, stop)`` after which the controller updates; ``gain``:
    change of log lambda per unit of log L0 error per step; ``ema_decay``: weight of the past in
    the L0 average (the error is clipped to +-1 in log L0, so lambda moves at most by a factor
    exp(gain) a step, however far off the L0 is, e.g. right after the warm-up). State: ``log_scale`` (u)
    and ``ema`` (None before the first batch), plus ``last_l0`` (the latest batch's L0, for the record).
    """

    def __init__(self, target: float, start: int, stop: int, gain: float, ema_decay: float) -> None:
        if not target > 0:
            raise ValueError(f"L0Controller: target must be > 0 active features per token, got {target!r}")
        self.target = float(target)
        self.start, self.stop = int(start), int(stop)
        self.gain, self.ema_decay = float(gain), float(ema_decay)
        self.log_scale = 0.0
        self.ema: float | None = None
        self.last_l0: float | None = None

    @classmethod
    def for_config(cls, cfg) -> "L0Controller | None":
        """The controller a member of a family trained with ``cfg`` (a ``TrainerConfig``) gets; None without ``target_l0``."""
        if cfg.target_l0 is None:
            return None
        warm_end = int(math.ceil(cfg.resolved_l1_warmup_frac * cfg.n_steps))
        start = max(warm_end, int(round(cfg.l0_start_frac * cfg.n_steps)))
        stop = cfg.n_steps - int(round(cfg.l0_freeze_frac * cfg.n_steps))
        return cls(cfg.target_l0, start, stop, cfg.l0_gain, cfg.l0_ema_decay)

    @property
    def scale(self) -> float:
        """The factor on the scheduled lambda: exp(u)."""
        return math.exp(self.log_scale)

    def observe(self, step: int, l0: float) -> None:
        """Take batch ``step``'s mean L0 (after its optimiser step) and update lambda for the next step."""
        l0 = float(l0)
        self.last_l0 = l0
        d = self.ema_decay
        self.ema = l0 if self.ema is None else d * self.ema + (1.0 - d) * l0
        if self.start <= step < self.stop:
            err = math.log(max(self.ema, 1e-3)) - math.log(self.target)  # > 0: too dense, raise lambda
            self.log_scale += self.gain * min(1.0, max(-1.0, err))

    # -- state (checkpoint) and record (saved metadata)
    def state(self) -> dict[str, Any]:
        return {"log_scale": self.log_scale, "ema": self.ema, "last_l0": self.last_l0}

    def load_state(self, state: dict[str, Any]) -> None:
        self.log_scale = float(state["log_scale"])
        self.ema = None if state["ema"] is None else float(state["ema"])
        self.last_l0 = None if state.get("last_l0") is None else float(state["last_l0"])

    def record(self, base_lambda: float) -> dict[str, Any]:
        """What a saved dictionary carries: the target, the lambda it ended at (``base_lambda`` x scale),
        the L0 it ended at (moving average and last batch) and how the controller ran."""
        return {"target_l0": self.target, "final_lambda": base_lambda * self.scale, "base_lambda": base_lambda,
                "lambda_scale": self.scale, "l0_ema": self.ema, "l0_last_batch": self.last_l0,
                "active_steps": [self.start, self.stop], "gain": self.gain, "ema_decay": self.ema_decay,
                "how": "integral control of log lambda on the moving average of the batch L0, frozen from "
                       "step active_steps[1] to the end"}
