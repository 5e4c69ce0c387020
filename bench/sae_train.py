"""Training-step speed, memory and quality of splitkit's SAE trainer against SAELens.

    python bench/sae_train.py [--quick] [--acts PATH] [--out docs/bench/sae_train.json]

For n in (4096, 16384) at d=512, batch 4096: the median time of single training steps of
splitkit's trainer (paper recipe) and of SAELens' standard SAE driven through its ``SAETrainer``
with a plain iterator over the same in-memory batches. The two are timed in alternating rounds
so that load from other processes on a shared machine hits both alike. splitkit's step cost
depends on how many features fire: it is timed twice, on the first steps from initialisation
(about half the features fire: dense fallback) and after a warm-up into the sparse regime where
training spends nearly all of its steps (warm-up steps use 512-token batches to get there
cheaply; the timed steps use 4096). SAELens' step cost does not depend on the state. Both are
timed at torch's thread count and, in the full run, again at one thread: on a shared 2-core
machine a second thread often waits on a busy core, which taxes every parallel op.

Quality: both train a 4096-feature dictionary from their own initialisation on the same batches
for the same number of steps and the same lambda (SAELens' MSE is summed over d_in, ours averaged,
so its coefficient is d_in * lambda; resampling is off for the comparison), then both are scored on
held-out tokens with one formula: MSE (mean over elements), FVU, L0, and MSE + lambda *
sum_i f_i ||W_dec,i|| (the penalty SAELens optimises; equal to the paper's for unit-norm rows).

Peak RSS: one training step in a fresh subprocess per (implementation, n) -- the first step from
initialisation, which is splitkit's largest (dense) step -- plus splitkit at n=131072.

Inputs: fixed random ReLU-ish activations (sparse non-negative mixtures of random directions,
plus noise, ReLU'd) unless ``--acts`` gives a .npy or .safetensors file of [N, 512] activations.
If SAELens cannot be imported or its API fails, a plain PyTorch fp32 autograd SAE stands in and is
labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from splitkit.sae import SAEConfig, SparseAutoencoder  # noqa: E402
from splitkit.train import FamilyTrainer, TensorSource, TrainerConfig  # noqa: E402

D = 512
BATCH = 4096
LAMBDA = 4e-3  # the paper's value for A/5
LR = 1e-3
WARM_L0, WARM_MAX = 100, 400  # warm-up target for the timed steps (see speed)
SCALE = 3.0  # mean magnitude of a direction in the synthetic inputs (see synthetic_acts)


# ------------------------------------------------------------------ data
def synthetic_acts(n_rows: int, d: int = D, seed: int = 0, n_dirs: int = 2048, active: int = 10) -> torch.Tensor:
    """Sparse non-negative mixtures of ``n_dirs`` fixed random directions (``active`` per row, drawn
    with power-law frequencies, exponential magnitudes of mean ``SCALE``), a constant offset, noise,
    then ReLU. ``SCALE`` is set so that the paper's lambda (0.004, with MSE averaged over elements)
    costs a modest share of the loss: the L1 term grows linearly with the input scale, MSE
    quadratically, so lambda only means something relative to the data's scale."""
    g = torch.Generator().manual_seed(12345)  # the directions and offset are the same for every seed
    dirs = torch.randn(n_dirs, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    offset = 0.5 * SCALE * torch.rand(d, generator=g)
    freq = (torch.arange(n_dirs) + 1.0) ** -0.7
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n_rows, d)
    for s in range(0, n_rows, 8192):
        r = min(8192, n_rows - s)
        idx = torch.multinomial(freq, r * active, replacement=True, generator=g).view(r, active)
        mag = torch.empty(r, active).exponential_(generator=g).mul_(SCALE)
        x = offset + 0.05 * SCALE * torch.randn(r, d, generator=g)
        for j in range(active):
            x += mag[:, j:j + 1] * dirs[idx[:, j]]
        out[s:s + r] = x.relu_()
    return out


def load_acts(path: str) -> torch.Tensor:
    if path.endswith(".npy"):
        x = torch.from_numpy(np.load(path, mmap_mode="r")[: 32 * BATCH].astype(np.float32))
    else:
        from safetensors.torch import load_file

        tensors = load_file(path)
        x = next(iter(tensors.values())) if "acts" not in tensors else tensors["acts"]
        x = x[: 32 * BATCH].float()
    if x.ndim != 2 or x.shape[1] != D:
        raise SystemExit(f"--acts must hold [N, {D}] activations, got {tuple(x.shape)}")
    return x.contiguous()


class WarmSource:
    """The bench's source: 512-token batches while ``warming``, then 4096 (not a pure function of
    ``step``, which only resumable training needs)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.warming = x, True
        self.d, self.batch_size, self.n_tokens = x.shape[1], BATCH, x.shape[0]

    def get_batch(self, step: int) -> torch.Tensor:
        bs = 512 if self.warming else BATCH
        start = (step * bs) % (self.n_tokens - bs + 1)
        return self.x[start:start + bs]


# ------------------------------------------------------------------ implementations
def make_saelens(n: int, x: torch.Tensor):
    """SAELens' StandardTrainingSAE + SAETrainer fed by a plain iterator over ``x``'s batches."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, __version__
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

    def batches():
        i = 0
        while True:
            yield x[(i * BATCH) % (x.shape[0] - BATCH + 1):][:BATCH]
            i += 1

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=n, l1_coefficient=LAMBDA * D))
    cfg = SAETrainerConfig(total_training_samples=BATCH * 10**6, train_batch_size_samples=BATCH, lr=LR, lr_end=LR)
    it = batches()
    trainer = SAETrainer(cfg, sae, it)

    def step():
        trainer.maybe_reset_sparsity()
        trainer.step(next(it))
        trainer.n_training_steps += 1

    weights = lambda: {k: getattr(sae, k).detach() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}  # noqa: E731
    return step, weights, f"SAELens {__version__} StandardTrainingSAE via SAETrainer (fp32)"


def make_plain(n: int, x: torch.Tensor):
    """Fallback peer: a plain PyTorch fp32 autograd SAE with Adam, same loss as SAELens'."""
    g = torch.Generator().manual_seed(0)
    W_dec = torch.nn.init.kaiming_uniform_(torch.empty(n, D), generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * 0.1
    params = {"W_enc": W_dec.t().clone().requires_grad_(), "b_enc": torch.zeros(n, requires_grad=True),
              "W_dec": W_dec.clone().requires_grad_(), "b_dec": torch.zeros(D, requires_grad=True)}
    opt = torch.optim.Adam(params.values(), lr=LR)
    state = {"i": 0}

    def step():
        xb = x[(state["i"] * BATCH) % (x.shape[0] - BATCH + 1):][:BATCH]
        state["i"] += 1
        f = torch.relu((xb - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
        x_hat = f @ params["W_dec"] + params["b_dec"]
        loss = (x_hat - xb).pow(2).sum(1).mean() + LAMBDA * D * (f * params["W_dec"].norm(dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    label = "plain PyTorch fp32 autograd SAE (SAELens unavailable)"
    return step, lambda: {k: v.detach() for k, v in params.items()}, label


def make_peer(n: int, x: torch.Tensor):
    try:
        peer = make_saelens(n, x)
        peer[0]()  # one step: API errors surface here
        return peer, None
    except Exception as err:  # noqa: BLE001 - report any import/API failure and fall back
        return make_plain(n, x), f"{type(err).__name__}: {err}"[:300]


def make_ours(n: int, source, n_steps: int, resample: bool = True) -> FamilyTrainer:
    cfg = TrainerConfig(recipe="paper", lr=LR, l1_coeff=LAMBDA, n_steps=n_steps, batch_size=BATCH,
                        matmul_dtype="auto", resample_steps=None if resample else ())
    return FamilyTrainer([SparseAutoencoder(SAEConfig(d_in=D, n_features=n))], source, cfg)


# ------------------------------------------------------------------ measurements
def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speed(n: int, x: torch.Tensor, quick: bool, threads: list[int]) -> dict:
    """Median step times of both implementations at each thread count (alternating rounds)."""
    rounds, per_round = (2, 2) if quick else (3, 3)
    early_steps = 2 if quick else 3
    torch.set_num_threads(threads[0])
    early = make_ours(n, TensorSource(x, BATCH, seed=0), n_steps=10**6)
    early_times = [timed(early.train_step) for _ in range(early_steps)]
    del early
    source = WarmSource(x)
    ours = make_ours(n, source, n_steps=10**6)
    m = ours.members[0]
    run = 0
    while run < 3 and ours.step < WARM_MAX:  # until L0 <= WARM_L0 for 3 steps in a row
        ours.train_step()
        run = run + 1 if m.last.sparse and float(m.last.fire_counts.sum()) <= WARM_L0 * 512 else 0
    warm = ours.step
    source.warming = False
    ours.train_step()
    ours.train_step()
    (peer_step, _, peer_label), peer_error = make_peer(n, x)
    out = {"n": n, "peer": peer_label, "peer_error": peer_error,
           "splitkit_warmup": f"{warm} steps of 512 tokens (until L0 <= {WARM_L0} on 3 steps in a row, at most "
                              f"{WARM_MAX}) + 2 of 4096 before timing",
           "splitkit_first_steps_s": early_times, "first_steps_threads": threads[0],
           "splitkit_first_steps_tok_s": BATCH / statistics.median(early_times), "by_threads": {}}
    l0s, sparse = [], []
    for t in threads:
        torch.set_num_threads(t)
        ours.train_step()  # settle after a thread-count change
        peer_step()
        ours_t, peer_t = [], []
        for _ in range(rounds):  # alternate so that machine load hits both alike
            for _ in range(per_round):
                ours_t.append(timed(ours.train_step))
                l0s.append(float(m.last.fire_counts.sum()) / BATCH)
                sparse.append(bool(m.last.sparse))
            peer_t += [timed(peer_step) for _ in range(per_round)]
        out["by_threads"][t] = {
            "splitkit_step_s": ours_t, "peer_step_s": peer_t,
            "splitkit_tok_s": BATCH / statistics.median(ours_t), "peer_tok_s": BATCH / statistics.median(peer_t),
            "ratio": statistics.median(peer_t) / statistics.median(ours_t),
        }
    torch.set_num_threads(threads[0])
    main = out["by_threads"][threads[0]]
    out.update(splitkit_tok_s=main["splitkit_tok_s"], peer_tok_s=main["peer_tok_s"], ratio=main["ratio"],
               ratio_first_steps=out["splitkit_first_steps_tok_s"] / main["peer_tok_s"],
               splitkit_L0_when_timed=statistics.median(l0s), splitkit_sparse_path_when_timed=all(sparse))
    return out


@torch.no_grad()
def score(w: dict, x_eval: torch.Tensor) -> dict:
    f = torch.relu((x_eval - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    x_hat = f @ w["W_dec"] + w["b_dec"]
    mse = (x_hat - x_eval).pow(2).mean().item()
    fvu = ((x_hat - x_eval).pow(2).sum() / (x_eval - x_eval.mean(0)).pow(2).sum()).item()
    l1 = (f * w["W_dec"].norm(dim=1)).sum(1).mean().item()
    return {"mse": mse, "fvu": fvu, "l0": (f > 0).float().sum(1).mean().item(), "l1_decnorm": l1,
            "loss": mse + LAMBDA * l1, "dead_frac": ((f > 0).sum(0) == 0).float().mean().item()}


def quality(x: torch.Tensor, x_eval: torch.Tensor, steps: int) -> dict:
    n = 4096
    ours = make_ours(n, TensorSource(x, BATCH, seed=0), n_steps=steps, resample=False)
    t0 = time.perf_counter()
    while ours.step < steps:
        ours.train_step()
    ours_s = time.perf_counter() - t0
    ours_w = {k: getattr(ours.members[0].sae, k).detach() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    (peer_step, peer_weights, label), err = make_peer(n, x)
    t0 = time.perf_counter()
    for _ in range(steps - 1):  # make_peer already took one step (timed below as the mean of the rest)
        peer_step()
    peer_s = (time.perf_counter() - t0) * steps / (steps - 1)
    return {"n": n, "steps": steps, "tokens": steps * BATCH, "lambda": LAMBDA, "lr": LR, "resampling": False,
            "splitkit": {**score(ours_w, x_eval), "train_s": ours_s},
            "peer": {**score(peer_weights(), x_eval), "train_s": peer_s, "label": label, "error": err}}


def peak_rss_mib() -> float:
    """Peak resident set of this process (VmHWM: unlike ru_maxrss it is not carried over exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_child(impl: str, n: int) -> None:
    """Subprocess body: one training step from initialisation, print peak RSS as JSON."""
    base = peak_rss_mib()
    x = synthetic_acts(2 * BATCH, seed=3)
    if impl == "splitkit":
        tr = make_ours(n, TensorSource(x, BATCH, seed=0), n_steps=10)
        step = tr.train_step
    else:
        (step, _, _), _ = make_peer(n, x)  # includes one step
    t = timed(step)
    peak = peak_rss_mib()
    print(json.dumps({"impl": impl, "n": n, "peak_rss_mib": peak, "rss_before_mib": base, "step_s": t}))


def peak_rss(impl: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--_rss", impl, str(n)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"impl": impl, "n": n, "error": (res.stderr or res.stdout)[-500:]}
    return json.loads(lines[-1])


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "splitkit/sae.py", "splitkit/train"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + (" (sae.py/trainer.py uncommitted)" if dirty else "")
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, no n=131072 memory run")
    ap.add_argument("--acts", help="a .npy or .safetensors file of [N, 512] activations (default: synthetic)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "sae_train.json"))
    ap.add_argument("--_rss", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._rss:
        peak_rss_child(args._rss[0], int(args._rss[1]))
        return
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    t_start = time.time()
    x = load_acts(args.acts) if args.acts else synthetic_acts(16 * BATCH, seed=0)
    x_eval = synthetic_acts(2 * BATCH, seed=1) if not args.acts else x[-2 * BATCH:]
    if args.acts:
        x = x[: -2 * BATCH]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}, "
          f"bf16 fast: {torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()}", flush=True)

    threads = [torch.get_num_threads()] + ([] if args.quick or torch.get_num_threads() == 1 else [1])
    speeds = []
    for n in (4096, 16384):
        print(f"timing n={n} (threads {threads}) ...", flush=True)
        speeds.append(speed(n, x, args.quick, threads))
    print("quality run ...", flush=True)
    qual = quality(x, x_eval, 30 if args.quick else 200)
    print("peak memory (subprocesses) ...", flush=True)
    mem = [peak_rss("splitkit", n) for n in (4096, 16384)] + [peak_rss("peer", n) for n in (4096, 16384)]
    if not args.quick:
        mem.append(peak_rss("splitkit", 131072))
    rss = {(m["impl"], m["n"]): m.get("peak_rss_mib") for m in mem}

    rows = []
    for s in speeds:
        for t, bt in s["by_threads"].items():
            first = t == s["first_steps_threads"]
            rows.append({
                "n": s["n"], "threads": t,
                "splitkit_tok_s": round(bt["splitkit_tok_s"]),
                "peer_tok_s": round(bt["peer_tok_s"]),
                "ratio": round(bt["ratio"], 2),
                "splitkit_first_steps_tok_s": round(s["splitkit_first_steps_tok_s"]) if first else None,
                "ratio_first_steps": round(s["ratio_first_steps"], 2) if first else None,
                "splitkit_L0_when_timed": round(s["splitkit_L0_when_timed"], 1),
                "splitkit_peak_rss_mib": rss.get(("splitkit", s["n"])),
                "peer_peak_rss_mib": rss.get(("peer", s["n"])),
            })
    print()
    print(f"{'n':>6} {'thr':>3} | {'splitkit tok/s':>14} | {'peer tok/s':>10} | {'ratio':>5} | {'first steps':>11} | "
          f"{'ratio':>5} | {'L0':>5} | {'RSS splitkit':>12} | {'RSS peer':>9}")
    for r in rows:
        fs = f"{r['splitkit_first_steps_tok_s']:>11,}" if r["splitkit_first_steps_tok_s"] else f"{'':>11}"
        fr = f"{r['ratio_first_steps']:>5.2f}" if r["ratio_first_steps"] else f"{'':>5}"
        print(f"{r['n']:>6} {r['threads']:>3} | {r['splitkit_tok_s']:>14,} | {r['peer_tok_s']:>10,} | "
              f"{r['ratio']:>5.2f} | "
              f"{fs} | {fr} | {r['splitkit_L0_when_timed']:>5.1f} | "
              f"{(r['splitkit_peak_rss_mib'] or 0):>8,.0f} MiB | {(r['peer_peak_rss_mib'] or 0):>5,.0f} MiB")
    big = rss.get(("splitkit", 131072))
    if big:
        print(f"splitkit n=131072: one step from init, peak RSS {big:,.0f} MiB")
    q = qual
    print(f"\nquality after {q['steps']} steps ({q['tokens']:,} tokens), n=4096, lambda={LAMBDA}, held-out tokens:")
    for name in ("splitkit", "peer"):
        r = q[name]
        print(f"  {name:>8}: loss {r['loss']:.5f}  mse {r['mse']:.5f}  fvu {r['fvu']:.3f}  L0 {r['l0']:.1f}  "
              f"dead {r['dead_frac']:.1%}  whole run {r['train_s']:.0f}s = {q['tokens'] / r['train_s']:,.0f} tok/s")
    failed = f"  (SAELens failed: {speeds[0]['peer_error']})" if speeds[0]["peer_error"] else ""
    print(f"peer: {speeds[0]['peer']}{failed}")

    result = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "torch": torch.__version__,
        "git_revision": git_revision(),
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                    "bf16_fast": bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {"d": D, "batch": BATCH, "lambda": LAMBDA, "lr": LR, "recipe": "paper",
                     "matmul_dtype": "auto", "data": args.acts or "synthetic ReLU-ish", "quick": args.quick},
        "table": rows,
        "columns": {"splitkit_tok_s": "median over timed steps after warm-up (sparse regime)",
                    "splitkit_first_steps_tok_s": "median of the first steps from initialisation (dense fallback)",
                    "ratio": "peer step time / splitkit step time, same threads, alternating rounds",
                    "splitkit_peak_rss_mib / peer_peak_rss_mib": "VmHWM of a fresh process running one step from init"},
        "speed": speeds,
        "quality": qual,
        "memory": mem,
        "wall_s": time.time() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
