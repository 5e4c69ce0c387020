"""Training-step speed and memory of splitkit's SAE trainer against its peers, each at its best setting.

    python bench/sae_train.py [--quick] [--peers-python VENV/bin/python] [--sizes 4096,16384]
                              [--family [512..131072]] [--acts PATH] [--out docs/bench/sae_train.json]

Peers (d=512, batch 4096, the same batches, lambda and lr for all): SAELens' StandardTrainingSAE
through its SAETrainer; dictionary_learning's StandardTrainer through its ``update``; a plain
PyTorch autograd SAE with fused Adam. Each runs in a worker subprocess of the Python that has it
(``--peers-python`` or $SPLITKIT_PEERS_PYTHON: a venv made with ``--system-site-packages`` reuses
this torch), which first tries the peer's candidate settings -- bf16 autocast where this CPU runs
bf16 GEMMs natively (AMX or AVX512-BF16), fp32, and for the plain SAE torch.compile -- and keeps
the fastest; the table states the setting beside each figure. A peer that cannot be imported is
skipped with one line saying how to install it. The peers' step cost does not depend on how many
features fire, so they are timed from their initialisation.

splitkit's step cost does: it is timed on the first steps from initialisation (about half the
features fire: the dense fallback; a fresh trainer in every round, whose very first step -- the
allocation of its gradients, Adam state and work buffers -- is timed apart, as the peers' first
step is taken by their probe and not timed) and after a warm-up into the
sparse regime where training spends nearly all of its steps (warm-up steps use 512-token batches
to get there cheaply). All of it runs in alternating rounds of one sitting -- splitkit first steps,
splitkit sparse steps, then each peer -- so that load from other processes hits every row alike.

Quality (unless ``--no-quality``): splitkit and SAELens train a 4096-feature dictionary from their
own initialisation on the same batches for the same steps and lambda (SAELens' MSE is summed over
d_in, ours averaged, so its coefficient is d_in * lambda; resampling off), scored on held-out
tokens with one formula. Peak RSS: splitkit's one step from initialisation in a fresh subprocess;
the peers' worker after its timed steps. ``--family``: one trainer over all the sizes in one pass
(the paper's 512..131072 by default), its first (dense) steps and steps with the biases set so
that L0 is about 20 (a stand-in for the trained sparse regime), with the process's peak RSS.

Inputs: fixed random ReLU-ish activations (sparse non-negative mixtures of random directions,
plus noise, ReLU'd) unless ``--acts`` gives a .npy or .safetensors file of [N, 512] activations.
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


# ------------------------------------------------------------------ peers
# Each peer runs in a worker subprocess (``--_peer NAME N``) of the Python that has it installed
# (``--peers-python`` / $SPLITKIT_PEERS_PYTHON, e.g. a venv made with --system-site-packages so that
# it reuses this torch), driven over stdin/stdout, so that the peers' own dependencies never enter
# splitkit's environment. The worker tries each candidate setting of its peer on a few steps and
# keeps the fastest: every peer runs at its best setting on the machine it finds, and says which.
PEERS = ("saelens", "dictionary_learning", "plain")
INSTALL = {"saelens": "pip install sae-lens", "dictionary_learning": "pip install dictionary-learning",
           "plain": "(torch only)"}


def bf16_fast() -> bool:
    from splitkit.precision import bf16_is_fast

    return bf16_is_fast("cpu")


def _batches(x: torch.Tensor):
    i = 0
    while True:
        yield x[(i * BATCH) % (x.shape[0] - BATCH + 1):][:BATCH]
        i += 1


def peer_saelens(n: int, x: torch.Tensor, autocast: bool):
    """SAELens' StandardTrainingSAE + SAETrainer fed by a plain iterator over ``x``'s batches."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, __version__
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=n, l1_coefficient=LAMBDA * D))
    cfg = SAETrainerConfig(total_training_samples=BATCH * 10**6, train_batch_size_samples=BATCH, lr=LR, lr_end=LR,
                           autocast=autocast)
    it = _batches(x)
    trainer = SAETrainer(cfg, sae, it)

    def step():
        trainer.maybe_reset_sparsity()
        trainer.step(next(it))
        trainer.n_training_steps += 1

    weights = lambda: {k: getattr(sae, k).detach() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}  # noqa: E731
    return step, weights, f"SAELens {__version__} StandardTrainingSAE via SAETrainer"


def peer_dictionary_learning(n: int, x: torch.Tensor, autocast: bool):
    """dictionary_learning's StandardTrainer (ConstrainedAdam, unit-norm decoder) through its ``update``.
    Its own ``trainSAE`` loop turns autocast off on CPU; the bf16 candidate wraps ``update`` in it."""
    import contextlib
    import importlib.metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dictionary_learning.trainers.standard import StandardTrainer

    tr = StandardTrainer(steps=10**7, activation_dim=D, dict_size=n, layer=0, lm_name="bench", lr=LR,
                         l1_penalty=LAMBDA * D, warmup_steps=1, sparsity_warmup_steps=None, seed=0, device="cpu",
                         wandb_name=None)
    it = _batches(x)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    state = {"i": 0}

    def step():
        with ctx():
            tr.update(state["i"], next(it))
        state["i"] += 1

    ae = tr.ae
    weights = lambda: {"W_enc": ae.encoder.weight.detach().t(), "b_enc": ae.encoder.bias.detach(),  # noqa: E731
                       "W_dec": ae.decoder.weight.detach().t(), "b_dec": ae.bias.detach()}
    return step, weights, f"dictionary_learning {importlib.metadata.version('dictionary-learning')} StandardTrainer"


def peer_plain(n: int, x: torch.Tensor, autocast: bool, compile_: bool = False):
    """A plain PyTorch autograd SAE (SAELens' loss), fused Adam; bf16 autocast and torch.compile as asked."""
    g = torch.Generator().manual_seed(0)
    W_dec = torch.nn.init.kaiming_uniform_(torch.empty(n, D), generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * 0.1
    params = {"W_enc": W_dec.t().contiguous().requires_grad_(), "b_enc": torch.zeros(n, requires_grad=True),
              "W_dec": W_dec.clone().requires_grad_(), "b_dec": torch.zeros(D, requires_grad=True)}
    opt = torch.optim.Adam(params.values(), lr=LR, fused=True)

    def loss_fn(xb, W_enc, b_enc, W_dec, b_dec):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            f = torch.relu((xb - b_dec) @ W_enc + b_enc)
            x_hat = f @ W_dec + b_dec
        return (x_hat.float() - xb).pow(2).sum(1).mean() + LAMBDA * D * (f.float() * W_dec.norm(dim=1)).sum(1).mean()

    fn = torch.compile(loss_fn) if compile_ else loss_fn
    it = _batches(x)

    def step():
        loss = fn(next(it), *params.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    label = "plain PyTorch autograd SAE (SAELens' loss, fused Adam)"
    return step, lambda: {k: v.detach() for k, v in params.items()}, label


def peer_candidates(name: str, compile_ok: bool) -> list[dict]:
    """The settings tried for peer ``name``: bf16 autocast only where bf16 GEMMs are native."""
    bf = [True, False] if bf16_fast() else [False]
    if name == "plain":
        return [{"autocast_bf16": a, "compile": c} for a in bf for c in ([False, True] if compile_ok else [False])]
    return [{"autocast_bf16": a} for a in bf]


def make_peer_setting(name: str, n: int, x: torch.Tensor, setting: dict):
    if name == "saelens":
        return peer_saelens(n, x, setting["autocast_bf16"])
    if name == "dictionary_learning":
        return peer_dictionary_learning(n, x, setting["autocast_bf16"])
    return peer_plain(n, x, setting["autocast_bf16"], setting.get("compile", False))


def peer_worker(name: str, n: int, data: str, compile_ok: bool) -> None:
    """Subprocess body: build peer ``name`` at each candidate setting, keep the fastest, then answer
    ``time K`` (K timed steps), ``save PATH`` (weights, splitkit's orientation) and ``quit`` on stdin."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    out = sys.stdout
    sys.stdout = sys.stderr  # the peers' own prints must not reach the protocol
    x = load_acts(data)[: -2 * BATCH] if data else synthetic_acts(16 * BATCH, seed=0)
    probes, best = [], None
    for setting in peer_candidates(name, compile_ok):
        try:
            step, weights, label = make_peer_setting(name, n, x, setting)
            t0 = time.perf_counter()
            step()  # first step: compilation, lazy state
            first = time.perf_counter() - t0
            ts = [timed(step) for _ in range(3)]
        except Exception as err:  # noqa: BLE001 - a setting the peer does not support on this machine
            probes.append({**setting, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        probes.append({**setting, "first_step_s": first, "probe_step_s": ts})
        if best is None or statistics.median(ts) < best[0]:
            best = (statistics.median(ts), setting, step, weights, label)
    if best is None:
        print(json.dumps({"error": "no setting ran", "probes": probes}), file=out, flush=True)
        return
    _, setting, step, weights, label = best
    print(json.dumps({"label": label, "setting": setting, "probes": probes}), file=out, flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "time":
            ts = [timed(step) for _ in range(int(cmd[1]))]
            print(json.dumps({"times": ts, "peak_rss_mib": peak_rss_mib()}), file=out, flush=True)
        elif cmd[0] == "save":
            from safetensors.torch import save_file

            save_file({k: v.float().contiguous() for k, v in weights().items()}, cmd[1])
            print(json.dumps({"saved": cmd[1]}), file=out, flush=True)
        else:
            return


class Peer:
    """The main process's handle on one peer worker: ``times(k)``, ``weights()``, ``close()``."""

    def __init__(self, name: str, n: int, python: str, data: str | None, compile_ok: bool) -> None:
        self.name = name
        cmd = [python, __file__, "--_peer", name, str(n), "--acts", data or ""] + ([] if compile_ok else ["--no-compile"])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONWARNINGS": "ignore",
                                                     "BENCH_THREADS": str(torch.get_num_threads())})
        self.info = self._read()
        self.error = self.info.get("error")
        self.label, self.setting = self.info.get("label"), self.info.get("setting")
        self.peak_rss_mib = None

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read()[-600:]
                return {"error": f"worker exited ({self.proc.poll()}): {err.strip()}"}
            if line.startswith("{"):
                return json.loads(line)

    def _ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def times(self, k: int) -> list[float]:
        r = self._ask(f"time {k}")
        self.peak_rss_mib = r.get("peak_rss_mib")
        return r["times"]

    def weights(self, path: str) -> dict:
        from safetensors.torch import load_file

        self._ask(f"save {path}")
        return load_file(path)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def peer_python(name: str, given: str | None) -> tuple[str | None, str | None]:
    """The Python that has peer ``name`` importable (given one first, then this one), or None and why."""
    module = {"saelens": "sae_lens", "dictionary_learning": "dictionary_learning"}.get(name)
    if module is None:
        return sys.executable, None
    for py in [p for p in (given, sys.executable) if p]:
        res = subprocess.run([py, "-c", f"import {module}"], capture_output=True, text=True)
        if res.returncode == 0:
            return py, None
    return None, f"{name} not importable: {INSTALL[name]} (into a venv made with --system-site-packages), then " \
                 f"pass --peers-python VENV/bin/python or set SPLITKIT_PEERS_PYTHON"


def make_ours(n: int, source, n_steps: int, resample: bool = True) -> FamilyTrainer:
    cfg = TrainerConfig(recipe="paper", lr=LR, l1_coeff=LAMBDA, n_steps=n_steps, batch_size=BATCH,
                        matmul_dtype="auto", resample_steps=None if resample else ())
    return FamilyTrainer([SparseAutoencoder(SAEConfig(d_in=D, n_features=n))], source, cfg)


# ------------------------------------------------------------------ measurements
def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def warmed(n: int, x: torch.Tensor) -> tuple[FamilyTrainer, str]:
    """A trainer warmed into the sparse regime (512-token steps until L0 <= WARM_L0 three times in a
    row, at most WARM_MAX), then two 4096-token steps."""
    source = WarmSource(x)
    ours = make_ours(n, source, n_steps=10**6)
    m = ours.members[0]
    run = 0
    while run < 3 and ours.step < WARM_MAX:
        ours.train_step()
        run = run + 1 if m.last.sparse and float(m.last.fire_counts.sum()) <= WARM_L0 * 512 else 0
    warm = ours.step
    source.warming = False
    ours.train_step()
    ours.train_step()
    return ours, (f"{warm} steps of 512 tokens (until L0 <= {WARM_L0} on 3 steps in a row, at most {WARM_MAX}) "
                  f"+ 2 of 4096 before timing")


def speed(n: int, x: torch.Tensor, peers: list[Peer], rounds: int, per_round: int, first_steps: int) -> dict:
    """Median step times, all in alternating rounds of one sitting: in each round splitkit's first
    ``first_steps`` steps from initialisation (dense), ``per_round`` steps of the warmed trainer
    (sparse), then ``per_round`` steps of each peer."""
    ours, warm_note = warmed(n, x)
    m = ours.members[0]
    first_t, alloc_t, sparse_t, l0s, sparse_flags = [], [], [], [], []
    peer_t: dict[str, list[float]] = {p.name: [] for p in peers}
    for p in peers:
        p.times(1)  # settle
    for _ in range(rounds):
        fresh = make_ours(n, TensorSource(x, BATCH, seed=0), n_steps=10**6)
        alloc_t.append(timed(fresh.train_step))  # allocations: not a per-step cost (the peers' is untimed too)
        first_t += [timed(fresh.train_step) for _ in range(first_steps)]
        first_sparse = fresh.members[0].last.sparse
        del fresh
        for _ in range(per_round):
            sparse_t.append(timed(ours.train_step))
            l0s.append(float(m.last.fire_counts.sum()) / BATCH)
            sparse_flags.append(bool(m.last.sparse))
        for p in peers:
            peer_t[p.name] += p.times(per_round)
    med = statistics.median
    out = {"n": n, "splitkit_warmup": warm_note, "splitkit_first_steps_s": first_t,
           "splitkit_step_one_s": alloc_t, "splitkit_step_s": sparse_t,
           "splitkit_tok_s": BATCH / med(sparse_t), "splitkit_first_steps_tok_s": BATCH / med(first_t),
           "splitkit_first_steps_dense": not first_sparse,
           "splitkit_L0_when_timed": med(l0s), "splitkit_sparse_path_when_timed": all(sparse_flags), "peers": {}}
    for p in peers:
        t = peer_t[p.name]
        out["peers"][p.name] = {"label": p.label, "setting": p.setting, "probes": p.info.get("probes"),
                                "step_s": t, "tok_s": BATCH / med(t), "ratio": med(t) / med(sparse_t),
                                "ratio_first_steps": med(t) / med(first_t), "ratio_step_one": med(t) / med(alloc_t),
                                "peak_rss_mib": p.peak_rss_mib}
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


def quality(x: torch.Tensor, x_eval: torch.Tensor, steps: int, peer: Peer | None, tmp: Path) -> dict:
    """splitkit and one peer (its first step was taken by the worker's probe) from their own
    initialisation on the same batches, scored on held-out tokens with one formula."""
    n = 4096
    ours = make_ours(n, TensorSource(x, BATCH, seed=0), n_steps=steps, resample=False)
    t0 = time.perf_counter()
    while ours.step < steps:
        ours.train_step()
    ours_s = time.perf_counter() - t0
    ours_w = {k: getattr(ours.members[0].sae, k).detach() for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    out = {"n": n, "steps": steps, "tokens": steps * BATCH, "lambda": LAMBDA, "lr": LR, "resampling": False,
           "splitkit": {**score(ours_w, x_eval), "train_s": ours_s}}
    if peer is not None and not peer.error:
        done = 1 + 3  # the probe's steps of the setting kept
        t = peer.times(max(1, steps - done))
        out["peer"] = {**score(peer.weights(str(tmp / "peer_weights.safetensors")), x_eval),
                       "train_s": sum(t) * steps / len(t), "label": peer.label, "setting": peer.setting,
                       "steps_note": f"{done} probe steps + {len(t)} timed"}
    return out


def peak_rss_mib() -> float:
    """Peak resident set of this process (VmHWM: unlike ru_maxrss it is not carried over exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sparse_biases_(sae: SparseAutoencoder, x: torch.Tensor, l0: float) -> None:
    """Set ``b_enc`` so that each feature fires on a share ``l0 / n`` of the rows of ``x [B, d]``: a
    stand-in for the trained sparse regime where training there first would cost too much."""
    with torch.no_grad():
        z = (x - sae.b_dec) @ sae.W_enc  # [B, n]
        k = max(1, int(round(x.shape[0] * l0 / sae.n_features)))
        sae.b_enc.copy_(-z.topk(k, dim=0).values[-1])


def family_child(sizes: list[int], steps: int, l0: float) -> None:
    """Subprocess body: one FamilyTrainer over all ``sizes`` in one pass; times its first (dense)
    steps, then the same after the biases are set for L0 ~ ``l0``; prints peak RSS as JSON."""
    x = synthetic_acts(4 * BATCH, seed=3)
    base = peak_rss_mib()
    cfg = TrainerConfig(recipe="paper", lr=LR, l1_coeff=LAMBDA, n_steps=10**6, batch_size=BATCH,
                        matmul_dtype="auto", resample_steps=())
    saes = [SparseAutoencoder(SAEConfig(d_in=D, n_features=n)) for n in sizes]
    tr = FamilyTrainer(saes, TensorSource(x, BATCH, seed=0), cfg)
    dense = [timed(tr.train_step) for _ in range(steps)]
    dense_sparse = [m.last.sparse for m in tr.members]
    for sae in saes:
        sparse_biases_(sae, x[:BATCH], l0)
    sparse = [timed(tr.train_step) for _ in range(steps)]
    print(json.dumps({"sizes": sizes, "features": sum(sizes), "dense_step_s": dense, "sparse_step_s": sparse,
                      "dense_members_on_sparse_path": dense_sparse,
                      "l0_per_member": [float(m.last.fire_counts.sum()) / BATCH for m in tr.members],
                      "peak_rss_mib": peak_rss_mib(), "rss_before_mib": base}))


def family(sizes: list[int], steps: int, l0: float) -> dict:
    cmd = [sys.executable, __file__, "--_family", ",".join(map(str, sizes)), str(steps), str(l0)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"sizes": sizes, "error": (res.stderr or res.stdout)[-500:]}
    r = json.loads(lines[-1])
    med = statistics.median
    r.update(dense_tok_s=BATCH / med(r["dense_step_s"]), sparse_tok_s=BATCH / med(r["sparse_step_s"]))
    return r


def peak_rss_child(n: int) -> None:
    """Subprocess body: one splitkit training step from initialisation, print peak RSS as JSON."""
    base = peak_rss_mib()
    x = synthetic_acts(2 * BATCH, seed=3)
    tr = make_ours(n, TensorSource(x, BATCH, seed=0), n_steps=10)
    t = timed(tr.train_step)
    print(json.dumps({"impl": "splitkit", "n": n, "peak_rss_mib": peak_rss_mib(), "rss_before_mib": base,
                      "step_s": t}))


def peak_rss(n: int) -> dict:
    cmd = [sys.executable, __file__, "--_rss", "splitkit", str(n)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"impl": "splitkit", "n": n, "error": (res.stderr or res.stdout)[-500:]}
    return json.loads(lines[-1])


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "splitkit/sae.py", "splitkit/train",
                                "splitkit/precision.py"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + (" (trainer files uncommitted)" if dirty else "")
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


def cpu_features() -> list[str]:
    """The CPU flags that decide GEMM speed (from /proc/cpuinfo)."""
    want = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in want if f in have]
    except OSError:
        pass
    return []


def setting_text(setting: dict | None) -> str:
    if not setting:
        return "-"
    parts = ["bf16 autocast" if setting.get("autocast_bf16") else "fp32"]
    if "compile" in setting:
        parts.append("torch.compile" if setting["compile"] else "eager")
    return ", ".join(parts)


def parse_sizes(text: str) -> list[int]:
    if ".." in text:
        lo, hi = (int(v) for v in text.split(".."))
        out = [lo]
        while out[-1] * 2 <= hi:
            out.append(out[-1] * 2)
        return out
    return [int(v) for v in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps, shorter quality run")
    ap.add_argument("--acts", help="a .npy or .safetensors file of [N, 512] activations (default: synthetic)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "sae_train.json"))
    ap.add_argument("--sizes", default="4096,16384", help="dictionary sizes timed against the peers")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"peers to time, from {','.join(PEERS)}")
    ap.add_argument("--peers-python", default=os.environ.get("SPLITKIT_PEERS_PYTHON"),
                    help="a Python with sae-lens / dictionary-learning installed (default: $SPLITKIT_PEERS_PYTHON, "
                         "then this one)")
    ap.add_argument("--no-compile", action="store_true", help="do not try torch.compile for the plain peer")
    ap.add_argument("--no-quality", action="store_true", help="skip the equal-tokens quality run")
    ap.add_argument("--family", nargs="?", const="512..131072", default=None,
                    help="also time one trainer over all these sizes in one pass (default 512..131072), heavy")
    ap.add_argument("--family-steps", type=int, default=2)
    ap.add_argument("--_rss", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_peer", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_family", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._rss:
        peak_rss_child(int(args._rss[1]))
        return
    if args._peer:
        peer_worker(args._peer[0], int(args._peer[1]), args.acts, not args.no_compile)
        return
    if args._family:
        family_child(parse_sizes(args._family[0]), int(args._family[1]), float(args._family[2]))
        return
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()
    t_start = time.time()
    x = load_acts(args.acts) if args.acts else synthetic_acts(16 * BATCH, seed=0)
    x_eval = synthetic_acts(2 * BATCH, seed=1) if not args.acts else x[-2 * BATCH:]
    if args.acts:
        x = x[: -2 * BATCH]
    feats = cpu_features()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()} ({' '.join(feats)}), "
          f"bf16 fast: {bf16_fast()}", flush=True)
    rounds, per_round, first_steps = (2, 2, 2) if args.quick else (3, 3, 2)
    names = [p for p in args.peers.split(",") if p]
    pythons, skipped = {}, {}
    for name in names:
        py, why = peer_python(name, args.peers_python)
        if py is None:
            skipped[name] = why
            print(f"skipping {why}", flush=True)
        else:
            pythons[name] = py
    speeds = []
    quality_peer = None
    for n in parse_sizes(args.sizes):
        print(f"n={n}: starting peers {list(pythons)} and warming splitkit ...", flush=True)
        peers = []
        for name, py in pythons.items():
            p = Peer(name, n, py, args.acts, not args.no_compile)
            if p.error:
                print(f"  {name} failed: {p.error}", flush=True)
                skipped[f"{name}@{n}"] = p.error
                p.close()
                continue
            print(f"  {name}: {p.label}, best setting {setting_text(p.setting)}", flush=True)
            peers.append(p)
        speeds.append(speed(n, x, peers, rounds, per_round, first_steps))
        for p in peers:
            if p.name == "saelens" and n == 4096 and not args.no_quality:
                quality_peer = p
            else:
                p.close()
    qual = None
    if not args.no_quality:
        print("quality run ...", flush=True)
        with __import__("tempfile").TemporaryDirectory() as tmp:
            qual = quality(x, x_eval, 30 if args.quick else 200, quality_peer, Path(tmp))
        if quality_peer is not None:
            quality_peer.close()
    print("peak memory (subprocesses) ...", flush=True)
    mem = [peak_rss(n) for n in parse_sizes(args.sizes)]
    fam = None
    if args.family:
        print(f"family {args.family}, {args.family_steps} steps each regime (subprocess) ...", flush=True)
        fam = family(parse_sizes(args.family), args.family_steps, 20.0)

    rows = []
    for s in speeds:
        rss = next((m.get("peak_rss_mib") for m in mem if m["n"] == s["n"]), None)
        for name, pr in s["peers"].items():
            rows.append({"n": s["n"], "peer": name, "peer_label": pr["label"], "peer_setting": pr["setting"],
                         "splitkit_tok_s": round(s["splitkit_tok_s"]), "peer_tok_s": round(pr["tok_s"]),
                         "ratio": round(pr["ratio"], 2),
                         "splitkit_first_steps_tok_s": round(s["splitkit_first_steps_tok_s"]),
                         "ratio_first_steps": round(pr["ratio_first_steps"], 2),
                         "ratio_step_one": round(pr["ratio_step_one"], 2),
                         "splitkit_L0_when_timed": round(s["splitkit_L0_when_timed"], 1),
                         "splitkit_peak_rss_mib": rss, "peer_peak_rss_mib": pr["peak_rss_mib"]})
    print()
    print(f"{'n':>6} | {'peer (best setting)':<42} | {'splitkit tok/s':>14} | {'peer tok/s':>10} | {'ratio':>6} | "
          f"{'first steps':>11} | {'ratio':>6} | {'L0':>5} | {'RSS splitkit':>12} | {'RSS peer':>9}")
    for r in rows:
        who = f"{r['peer']} ({setting_text(r['peer_setting'])})"
        print(f"{r['n']:>6} | {who:<42} | {r['splitkit_tok_s']:>14,} | {r['peer_tok_s']:>10,} | {r['ratio']:>5.2f}x | "
              f"{r['splitkit_first_steps_tok_s']:>11,} | {r['ratio_first_steps']:>5.2f}x | "
              f"{r['splitkit_L0_when_timed']:>5.1f} | {(r['splitkit_peak_rss_mib'] or 0):>8,.0f} MiB | "
              f"{(r['peer_peak_rss_mib'] or 0):>5,.0f} MiB")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    if qual is not None:
        print(f"\nquality after {qual['steps']} steps ({qual['tokens']:,} tokens), n=4096, lambda={LAMBDA}, held-out:")
        for name in ("splitkit", "peer"):
            if name in qual:
                r = qual[name]
                print(f"  {name:>8}: loss {r['loss']:.5f}  mse {r['mse']:.5f}  fvu {r['fvu']:.3f}  L0 {r['l0']:.1f}  "
                      f"dead {r['dead_frac']:.1%}  whole run {r['train_s']:.0f}s = {qual['tokens'] / r['train_s']:,.0f} tok/s")
    if fam is not None:
        if "error" in fam:
            print(f"\nfamily {fam['sizes']}: failed: {fam['error']}")
        else:
            print(f"\nfamily {fam['sizes']} ({fam['features']:,} features, one pass): first steps "
                  f"{fam['dense_tok_s']:,.0f} tok/s, sparse (biases set for L0 ~ 20) {fam['sparse_tok_s']:,.0f} tok/s, "
                  f"peak RSS {fam['peak_rss_mib']:,.0f} MiB")

    result = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "torch": torch.__version__,
        "git_revision": git_revision(),
        "machine": {"cpu": cpu_name(), "cpu_features": feats, "threads": torch.get_num_threads(),
                    "cores": os.cpu_count(), "bf16_fast": bf16_fast(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {"d": D, "batch": BATCH, "lambda": LAMBDA, "lr": LR, "recipe": "paper",
                     "matmul_dtype": "auto", "data": args.acts or "synthetic ReLU-ish", "quick": args.quick,
                     "rounds": rounds, "steps_per_round": per_round, "first_steps_per_round": first_steps},
        "table": rows,
        "columns": {"splitkit_tok_s": "median over timed steps after warm-up (sparse regime)",
                    "splitkit_first_steps_tok_s": "median of steps 2.. of a fresh trainer in every round (dense "
                                                  "fallback); step 1 (allocations) is in speed[].splitkit_step_one_s",
                    "ratio": "peer step time / splitkit step time (sparse), alternating rounds of one sitting",
                    "ratio_first_steps": "peer step time / splitkit first-step time",
                    "ratio_step_one": "peer step time / splitkit's step 1 of a fresh trainer (allocations included)",
                    "peer_setting": "the fastest of the peer's candidate settings on this machine (probed first)",
                    "splitkit_peak_rss_mib": "VmHWM of a fresh process running one step from init",
                    "peer_peak_rss_mib": "VmHWM of the peer's worker process after its timed steps (data included)"},
        "skipped": skipped,
        "speed": speeds,
        "quality": qual,
        "memory": mem,
        "family": fam,
        "wall_s": time.time() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
