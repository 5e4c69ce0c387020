"""Training the one-layer language model, resumable and deterministic.

Runs A and B differ only in ``seed``, which sets both the initialisation and the data order. The
batch for a step is a pure function of ``(seed, step)`` so a resumed run sees exactly the batches an
uninterrupted one would; with the RNG-free batch sampler and the optimizer state restored from the
checkpoint, resume is bitwise-identical on CPU.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .cache import atomic_save_safetensors, atomic_write_json
from .config import LMTrainConfig, ModelConfig
from .model import Transformer
from .precision import matmul_dtype


def lm_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the token stream for ``step``: ``x, y: [batch_size, n_ctx]`` (y shifted by one)."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - n_ctx - 1, size=batch_size)
    idx = starts[:, None] + np.arange(n_ctx + 1)[None, :]
    win = torch.from_numpy(tokens[idx].astype(np.int64))
    return win[:, :-1], win[:, 1:]


def lr_at(step: int, n_steps: int, cfg: LMTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    warm = max(1, int(cfg.warmup_frac * n_steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    p = (step - warm) / max(1, n_steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def make_optimizer(model: Transformer, cfg: LMTrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), foreach=True)


def _autocast(device: str, dtype: str):
    if dtype == "float32":
        return torch.autocast(device_type=torch.device(device).type, enabled=False)
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def resolve_dtype(dtype: str, device: str) -> str:
    """The autocast dtype for ``lm.dtype``: "bfloat16" asks for bf16 where :mod:`splitkit.precision`
    finds it native (on a CPU without AVX512-BF16/AMX it is ~100x slower), "float32" for fp32."""
    mm = matmul_dtype("auto" if dtype == "bfloat16" else dtype, device)
    return "bfloat16" if mm == torch.bfloat16 else "float32"


# --- checkpoints: weights and optimizer state as safetensors, the rest as JSON ---------------------

def save_checkpoint(folder: Path, model: Transformer, opt: torch.optim.Optimizer, meta: dict) -> None:
    folder = Path(folder)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"opt.{names[id(p)]}.{k}"] = v.reshape(-1) if v.dim() == 0 else v
    atomic_save_safetensors(folder / "checkpoint.safetensors", tensors)
    atomic_write_json(folder / "checkpoint.json", meta)  # written last: it marks the checkpoint valid


def load_checkpoint(folder: Path, model: Transformer, opt: torch.optim.Optimizer | None) -> dict | None:
    folder = Path(folder)
    if not (folder / "checkpoint.json").is_file() or not (folder / "checkpoint.safetensors").is_file():
        return None
    try:
        meta = json.loads((folder / "checkpoint.json").read_text())
        tensors = load_file(folder / "checkpoint.safetensors")
        state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if {k: tuple(v.shape) for k, v in state.items()} != want:
            raise ValueError("its weights do not fit this model's shapes")
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
            raise ValueError("checkpoint.json has no step")
        model.load_state_dict(state)  # only once everything is known to fit: a failure leaves the init intact
    except Exception as e:  # truncated or foreign files: training restarts rather than failing on every rerun
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        for f in ("checkpoint.safetensors", "checkpoint.json"):
            if (folder / f).exists():
                os.replace(folder / f, folder / f"{f}.unreadable")
        print(f"[splitkit] {folder}: resume checkpoint unreadable ({reason[:160]}); set aside as *.unreadable, "
              "training restarts from step 0", file=sys.stderr, flush=True)
        return None
    if opt is not None:
        params = dict(model.named_parameters())
        for name, p in params.items():
            st = {}
            for k in ("step", "exp_avg", "exp_avg_sq"):
                t = tensors.get(f"opt.{name}.{k}")
                if t is not None:
                    st[k] = t.reshape(()) if k == "step" else t
            if st:
                opt.state[p] = st
    return meta


@torch.no_grad()
def evaluate_lm(model: Transformer, tokens: np.ndarray, n_tokens: int, batch_size: int = 64, mlp_edit=None) -> float:
    """Mean next-token loss (nats/token) over contiguous, non-overlapping windows of ``tokens``."""
    T = model.cfg.n_ctx
    n_win = max(1, min(n_tokens // T, (len(tokens) - 1) // T))
    idx = np.arange(n_win)[:, None] * T + np.arange(T + 1)[None, :]
    total, count = 0.0, 0
    dev = next(model.parameters()).device
    for i in range(0, n_win, batch_size):
        win = torch.from_numpy(tokens[idx[i : i + batch_size]].astype(np.int64)).to(dev)
        loss = model.loss(win[:, :-1], win[:, 1:], mlp_edit=mlp_edit)
        total += loss.item() * win[:, 1:].numel()
        count += win[:, 1:].numel()
    return total / count


def train_lm(
    model_cfg: ModelConfig,
    cfg: LMTrainConfig,
    vocab_size: int,
    train_tokens: np.ndarray,
    seed: int,
    work_dir: Path,
    device: str = "cpu",
    progress: bool = True,
    val_tokens: np.ndarray | None = None,
    stop_after_steps: int | None = None,
) -> tuple[Transformer, dict]:
    """Train (or resume) a model in ``work_dir``; returns the model and its training log.

    ``stop_after_steps`` interrupts on purpose after that many steps of this call (used by tests).
    """
    from .progress import bar as tqdm

    torch.manual_seed(seed)
    model = Transformer(model_cfg, vocab_size).to(device)
    opt = make_optimizer(model, cfg)
    tokens_per_step = cfg.batch_size * model_cfg.n_ctx
    n_steps = max(1, cfg.n_tokens // tokens_per_step)
    dtype = resolve_dtype(cfg.dtype, device)
    meta = load_checkpoint(work_dir, model, opt) or {"step": 0, "log": [], "elapsed_s": 0.0}
    start = meta["step"]
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=n_steps, initial=start, desc=f"LM seed {seed}", unit="step", disable=not progress, leave=False)
    ema = None
    end = n_steps if stop_after_steps is None else min(n_steps, start + stop_after_steps)
    for step in range(start, end):
        x, y = lm_batch(train_tokens, seed, step, cfg.batch_size, model_cfg.n_ctx)
        x, y = x.to(device), y.to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, n_steps, cfg)
        with _autocast(device, dtype):
            loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = loss.item()
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        done = step + 1
        if done % 25 == 0 or done == n_steps:
            meta["log"].append({"step": done, "loss": lv})
        el = meta["elapsed_s"] + time.perf_counter() - t0
        bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{(done - start) * tokens_per_step / max(1e-9, time.perf_counter() - t0):,.0f}")
        bar.update(1)
        if done % cfg.checkpoint_every == 0 and done < n_steps:
            save_checkpoint(work_dir, model, opt, {**meta, "step": done, "elapsed_s": el})
    bar.close()
    elapsed = meta["elapsed_s"] + time.perf_counter() - t0
    meta = {**meta, "step": end, "elapsed_s": elapsed,
            "n_steps": n_steps, "tokens_trained": n_steps * tokens_per_step, "dtype": dtype, "seed": seed}
    save_checkpoint(work_dir, model, opt, meta)
    model.eval()
    return model, meta


def save_model(folder: Path, model: Transformer, extra: dict | None = None) -> None:
    atomic_save_safetensors(Path(folder) / "model.safetensors", model.state_dict())
    atomic_write_json(Path(folder) / "model.json", {"model": model.cfg.to_dict(), "vocab_size": model.vocab_size, **(extra or {})})


def load_model(folder: Path, device: str = "cpu") -> Transformer:
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    model = Transformer(ModelConfig.from_dict(meta["model"]), meta["vocab_size"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.to(device).eval()
