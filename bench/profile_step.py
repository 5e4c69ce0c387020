"""Where the time of one splitkit training step goes, per op (torch.profiler), sparse and dense.

    python bench/profile_step.py [--sizes 4096,16384] [--steps 3] [--l0 20] [--out docs/bench/profile_step.json]

One dictionary (paper recipe, d=512, batch 4096, the bench's synthetic activations) stepped by
``FamilyTrainer.train_step`` (so Adam, the decoder constraint and the statistics are included) at
lr 0, so that the state -- and with it the number of active pairs -- stays put while it is
profiled. Sparse regime: ``b_enc`` set so that each feature fires on L0/n of the tokens (L0 ~
``--l0``); dense: the first steps from initialisation (about half of the pairs active). The sparse
step is profiled on both implementations, the numba kernels (``train/kernels.py``) and the torch
ops they replace, alternating; the kernels appear as ``kernels.*`` rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sae_train import BATCH, D, LAMBDA, cpu_features, sparse_biases_, synthetic_acts  # noqa: E402

from splitkit.sae import SAEConfig, SparseAutoencoder  # noqa: E402
from splitkit.train import FamilyTrainer, TensorSource, TrainerConfig, kernels  # noqa: E402

KERNELS = ("active_pairs_chunk", "fill_pairs_chunk", "decode_sddmm", "csc_order", "weight_grads", "dense_relu_",
           "dense_grad_mask_")
_usable = kernels.usable
for _name in KERNELS:  # label the kernels in the profile (numba calls are invisible to it otherwise)
    def _wrap(fn, label):
        @functools.wraps(fn)
        def inner(*a, **k):
            with record_function(label):
                return fn(*a, **k)
        return inner
    setattr(kernels, _name, _wrap(getattr(kernels, _name), f"kernels.{_name}"))


def trainer(n: int, x: torch.Tensor) -> FamilyTrainer:
    cfg = TrainerConfig(recipe="paper", lr=0.0, l1_coeff=LAMBDA, n_steps=10**6, batch_size=BATCH,
                        matmul_dtype="auto", resample_steps=())
    return FamilyTrainer([SparseAutoencoder(SAEConfig(d_in=D, n_features=n))], TensorSource(x, BATCH, seed=0), cfg)


def use_kernels(on: bool) -> None:
    kernels.usable = _usable if on else (lambda *t: False)


def table(prof, steps: int, top: int) -> list[dict]:
    rows = []
    total = 0.0
    for ev in prof.key_averages():
        if ev.key.startswith("ProfilerStep"):
            continue
        self_ms = ev.self_cpu_time_total / 1e3 / steps
        if ev.key.startswith("kernels."):
            self_ms = ev.cpu_time_total / 1e3 / steps  # the numba call is the label's own time
        total += self_ms
        rows.append({"op": ev.key, "ms_per_step": self_ms, "calls_per_step": ev.count / steps})
    rows.sort(key=lambda r: -r["ms_per_step"])
    for r in rows:
        r["share"] = r["ms_per_step"] / total if total else 0.0
    return rows[:top]


def run(n: int, x: torch.Tensor, regime: str, fused: bool, steps: int, l0: float, top: int) -> dict:
    use_kernels(fused)
    tr = trainer(n, x)
    m = tr.members[0]
    if regime == "sparse":
        sparse_biases_(m.sae, x[:BATCH], l0)
    tr.train_step()  # warm: buffers, Adam state, numba compilation
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            tr.train_step()
            walls.append(time.perf_counter() - t0)
    return {"n": n, "regime": regime, "impl": "kernels" if fused else "torch ops", "step_s": walls,
            "median_step_ms": 1e3 * statistics.median(walls), "L0": float(m.last.fire_counts.sum()) / BATCH,
            "sparse_path": bool(m.last.sparse), "ops": table(prof, steps, top)}


def curve(n: int, x: torch.Tensor, steps: int) -> dict:
    """The loss curve of one fixed-seed run (lr 1e-3, from initialisation: dense, then sparse) on the
    kernels and on the torch ops, step by step."""
    out = {}
    for fused in (True, False):
        use_kernels(fused)
        cfg = TrainerConfig(recipe="paper", lr=1e-3, l1_coeff=LAMBDA, n_steps=steps, batch_size=BATCH,
                            matmul_dtype="auto", resample_steps=(), log_every=1)
        tr = FamilyTrainer([SparseAutoencoder(SAEConfig(d_in=D, n_features=n))], TensorSource(x, BATCH, seed=0), cfg)
        t0 = time.perf_counter()
        while tr.step < steps:
            tr.train_step()
        log = tr.members[0].log
        out["kernels" if fused else "torch ops"] = {"loss": log["loss"], "l0": log["l0"], "sparse": log["sparse"],
                                                     "wall_s": time.perf_counter() - t0}
    use_kernels(True)
    a, b = out["kernels"]["loss"], out["torch ops"]["loss"]
    out["max_rel_loss_diff"] = max(abs(u - v) / abs(v) for u, v in zip(a, b))
    out["n"], out["steps"] = n, steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4096,16384")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--l0", type=float, default=20.0)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "profile_step.json"))
    ap.add_argument("--curve", type=int, default=0, metavar="STEPS",
                    help="instead: a fixed-seed run of STEPS steps at the first size on both implementations")
    args = ap.parse_args()
    x = synthetic_acts(4 * BATCH, seed=0)
    if args.curve:
        x = synthetic_acts(16 * BATCH, seed=0)
        r = curve(int(args.sizes.split(",")[0]), x, args.curve)
        a, b = r["kernels"], r["torch ops"]
        print("step | loss (kernels) | loss (torch ops) | L0 | path\n|---|---|---|---|---|")
        for i in range(len(a["loss"])):
            if i < 5 or i % max(1, len(a["loss"]) // 12) == 0 or i == len(a["loss"]) - 1:
                print(f"| {i + 1} | {a['loss'][i]:.6f} | {b['loss'][i]:.6f} | {a['l0'][i]:.1f} | "
                      f"{'sparse' if a['sparse'][i] else 'dense'} |")
        print(f"max relative difference {r['max_rel_loss_diff']:.2e}; wall {a['wall_s']:.0f} s (kernels) vs "
              f"{b['wall_s']:.0f} s (torch ops)")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {args.out}")
        return
    out = {"command": " ".join(["python"] + sys.argv), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu_features": cpu_features(), "numba": kernels.HAVE_NUMBA, "runs": []}
    for n in (int(v) for v in args.sizes.split(",")):
        plan = [("sparse", False), ("sparse", True), ("dense", True)] if kernels.HAVE_NUMBA else \
            [("sparse", False), ("dense", False)]
        for regime, fused in plan:
            r = run(n, x, regime, fused, args.steps, args.l0, args.top)
            out["runs"].append(r)
            print(f"\nn={n} {regime} ({r['impl']}): {r['median_step_ms']:.0f} ms/step, L0 {r['L0']:.1f}, "
                  f"sparse path {r['sparse_path']}")
            print("| op | ms/step | share | calls/step |\n|---|---|---|---|")
            for o in r["ops"]:
                print(f"| `{o['op']}` | {o['ms_per_step']:.1f} | {o['share']:.0%} | {o['calls_per_step']:g} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
