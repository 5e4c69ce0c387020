"""Train a family of dictionaries over several processes and GPUs with ``torchrun`` (torch.distributed).

    torchrun --nproc_per_node 2 -m studies.dictionaries --preset smoke --seed 0 --sizes 64,128 --mode sizes
    torchrun --nproc_per_node 8 -m studies.dictionaries --preset paper --device cuda --mode sizes
    torchrun --nproc_per_node 4 -m studies.dictionaries --preset paper --device cuda --sizes 131072 --mode data

Two ways to spread a family (:func:`train_family_distributed`):

``"sizes"`` -- the dictionaries are dealt to the processes (largest first, each to the least loaded,
    a step's cost being about proportional to the size), and every process trains its share with
    :class:`~splitkit.train.FamilyTrainer` on the same batches (``source.get_batch(step)`` is a pure
    function of ``step``, so each process reads them itself; nothing is sent while training). Every
    random draw is keyed by (seed, step, dictionary), so the result is bitwise identical to one
    process running :func:`~splitkit.train.train_family` on CPU. Each process trains and keeps
    its resume checkpoints in its own ``out_dir/parts/<names>/`` (named after the dictionaries it
    holds, so a rerun with the same process count resumes there), then moves its own
    ``final/sae_{n}/`` and ``snapshots/step_{k}/sae_{n}/`` into ``out_dir``; process 0 merges the
    summaries into ``out_dir/train_log.json`` and ``snapshots/step_{k}/snapshot.json``.
``"data"`` -- every process holds the whole family and takes a contiguous block of ``B / world`` rows
    of every batch; after ``sae_step`` the four gradients are averaged and the firing counts and
    loss terms are combined over processes (:class:`DataParallelReducer`, a
    :class:`~splitkit.train.StepReducer`), so every process takes the same optimiser step and keeps
    identical weights (checked at the end). Resampling reads whole batches from the source on every
    process, so it stays identical too. Equal to a one-process run up to float rounding (the batch
    sums are split differently). Process 0 writes checkpoints, snapshots and ``final/``; on resume
    every process reads them.

Both use the default process group (the command line sets it up from torchrun's environment: ``gloo``
on CPU, ``nccl`` with ``--device cuda``, one GPU per process, ``cuda:{LOCAL_RANK}``); without one they
run as a single process. ``out_dir`` must be one folder that every process sees (one machine, or a
shared file system). Summaries travel between processes as JSON bytes, never pickle.

The command line trains the family of LM ``--seed`` for the given preset through the cached
pipeline and seals it as the pipeline's ``dicts`` artifact, so ``pipeline.get_family(cfg, seed)``
afterwards finds it ready. Only process 0 builds what comes before (tokens, LM, activation store);
the others wait, then open the same store.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from .cache import atomic_write_json
from .sae import SparseAutoencoder
from .train import ActivationSource, FamilyTrainer, StepStats, TrainerConfig, run_trainer
from .train.member import PARAMS, member_names

__all__ = ["MODES", "deal_sizes", "DataParallelReducer", "train_family_distributed", "train_pipeline_family"]

MODES = ("sizes", "data")
PARTS = "parts"  # out_dir/parts/<names>/: one process's own FamilyTrainer folder in mode "sizes"


# ---------------------------------------------------------------------------------------------
# Process-group helpers (all of them also work with no process group: one process)
# ---------------------------------------------------------------------------------------------
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device() -> torch.device:
    """Where tensors sent between processes must live: the current GPU under NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _barrier() -> None:
    if _rank_world()[1] > 1:
        dist.barrier()


def _all_gather_json(obj: Any) -> list[Any]:
    """Every process's ``obj`` (JSON-able), in rank order. Sent as UTF-8 JSON bytes, not pickle."""
    rank, world = _rank_world()
    data = json.dumps(obj).encode()
    if world == 1:
        return [json.loads(data)]
    dev = _comm_device()
    size = torch.tensor([len(data)], dtype=torch.long, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    n_max = max(int(s.item()) for s in sizes)
    buf = torch.zeros(n_max, dtype=torch.uint8)
    buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    bufs = [torch.empty(n_max, dtype=torch.uint8, device=dev) for _ in range(world)]
    dist.all_gather(bufs, buf.to(dev))
    return [json.loads(bytes(b[: int(s.item())].cpu().numpy())) for b, s in zip(bufs, sizes)]


def _broadcast_json(obj: Any, src: int = 0) -> Any:
    """``obj`` of process ``src`` on every process."""
    return _all_gather_json(obj if _rank_world()[0] == src else None)[src]


def _agree(error: str | None) -> None:
    """Raise the first process's error on every process, so none is left waiting for the others."""
    errors = [e for e in _all_gather_json(error) if e is not None]
    if errors:
        raise ValueError(errors[0])


def _say(msg: str) -> None:
    if _rank_world()[0] == 0:
        print(f"[splitkit] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Mode "sizes": dictionaries dealt to processes
# ---------------------------------------------------------------------------------------------
def deal_sizes(sizes: Sequence[int], world: int) -> list[list[int]]:
    """Indices into ``sizes`` that each of ``world`` processes trains (ascending within a share).

    Largest first, each to the process with the least total size so far (ties: the lower rank):
    the longest-processing-time rule. A step's cost is about proportional to the size (the encoder
    GEMM is ``[B, d] @ [d, n]``), so the loads come out near equal. Deterministic in its inputs.
    """
    if world < 1:
        raise ValueError(f"deal_sizes: world must be >= 1, got {world}")
    load = [0] * world
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(sizes)), key=lambda j: (-int(sizes[j]), j)):
        r = min(range(world), key=lambda q: (load[q], q))
        shares[r].append(i)
        load[r] += int(sizes[i])
    return [sorted(s) for s in shares]


def _move_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing a copy left there by an earlier run."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _publish(part: Path, out: Path, names: dict[str, str]) -> None:
    """Move this process's ``final/`` and ``snapshots/`` folders (local name -> family name) into ``out``."""
    for local, full in names.items():
        src = part / "final" / local
        if src.is_dir():
            _move_dir(src, out / "final" / full)
        for snap in sorted((part / "snapshots").glob("step_*")):
            if (snap / local).is_dir():
                _move_dir(snap / local, out / "snapshots" / snap.name / full)


def _merge_summaries(parts: list[dict | None], names: list[str]) -> dict[str, Any]:
    """One family summary (``train_family``'s shape) from the processes' summaries."""
    done = [p for p in parts if p is not None]
    merged = dict(done[0])
    for key in merged:
        if key.startswith("elapsed"):  # the family is done when its slowest process is
            merged[key] = max(p[key] for p in done)
    if "tokens_per_s" in merged:
        merged["tokens_per_s"] = min(p["tokens_per_s"] for p in done)
    saes = {k: v for p in done for k, v in p["saes"].items()}
    merged["saes"] = {name: saes[name] for name in names}  # the caller's order
    return merged


def _merge_snapshot_info(out: Path, part_dirs: list[Path], steps: Sequence[int]) -> None:
    """``snapshots/step_{k}/snapshot.json`` of the whole family from the processes' own."""
    for k in steps:
        infos = [json.loads(f.read_text()) for f in (d / "snapshots" / f"step_{k}" / "snapshot.json"
                                                     for d in part_dirs) if f.is_file()]
        if infos:
            info = dict(infos[0])
            if "elapsed_s" in info:
                info["elapsed_s"] = max(i.get("elapsed_s", 0.0) for i in infos)
            atomic_write_json(out / "snapshots" / f"step_{k}" / "snapshot.json", info)


def _broadcast_weights(saes: list[SparseAutoencoder], owner: list[int]) -> None:
    """Copy every trained dictionary from the process that trained it into every other's ``saes``."""
    rank, world = _rank_world()
    if world == 1:
        return
    dev = _comm_device()
    with torch.no_grad():
        for sae, src in zip(saes, owner):
            for p in PARAMS:
                t = getattr(sae, p)
                buf = t.detach().to(dev).contiguous() if rank == src else torch.empty_like(t, device=dev)
                dist.broadcast(buf, src=src)
                if rank != src:
                    t.copy_(buf)


def _train_sizes(saes: list[SparseAutoencoder], source: ActivationSource, cfg: TrainerConfig, out: Path | None,
                 device: str | torch.device, progress: bool, gather: bool) -> dict[str, Any]:
    rank, world = _rank_world()
    names = member_names(saes)  # the family's names (a share alone could name its members differently)
    shares = deal_sizes([s.n_features for s in saes], world)
    owner = [r for i in range(len(saes)) for r, share in enumerate(shares) if i in share]
    idle = [r for r, share in enumerate(shares) if not share]
    if idle:
        _say(f"mode 'sizes': {len(saes)} dictionaries for {world} processes, ranks {idle} have none "
             "(use fewer processes, or mode 'data' to split the batches)")
    part_dirs = [out / PARTS / "+".join(names[i] for i in share) if out is not None else None
                 for share in shares]
    mine = shares[rank]
    trainer, error = None, None
    if mine:
        try:
            trainer = FamilyTrainer([saes[i] for i in mine], source, cfg, out_dir=part_dirs[rank], device=device)
        except ValueError as e:
            error = str(e)
    _agree(error)
    part = None
    if trainer is not None:
        local = {m.name: names[i] for m, i in zip(trainer.members, mine)}  # FamilyTrainer's name -> family's
        part = trainer.finish(run_trainer(trainer, progress and rank == 0, f"rank {rank}/{world}"))
        part["saes"] = {local[k]: v for k, v in part["saes"].items()}
        if out is not None:
            _publish(part_dirs[rank], out, local)
    merged = _merge_summaries(_all_gather_json(part), names)
    merged["distributed"] = {"mode": "sizes", "world_size": world, "rank_of": dict(zip(names, owner))}
    if gather:
        _broadcast_weights(saes, owner)
    if rank == 0 and out is not None:
        _merge_snapshot_info(out, [d for d, share in zip(part_dirs, shares) if share], cfg.snapshot_steps)
        atomic_write_json(out / "train_log.json", merged)
    _barrier()  # every file is in place when any process returns
    return merged


# ---------------------------------------------------------------------------------------------
# Mode "data": batches split over processes, gradients averaged
# ---------------------------------------------------------------------------------------------
class DataParallelReducer:
    """:class:`~splitkit.train.StepReducer` over the default process group.

    ``shard``: rows ``[rank * B/world, (rank + 1) * B/world)`` of the batch (a view, no copy).
    ``reduce``: all-reduces the four gradients (sum, then divided by world: every share has the
    same number of rows, so the mean of the shares' mean-loss gradients is the whole batch's) and one
    float64 vector of the firing counts (exact up to 2^53) and the loss terms. The reductions are
    issued together and awaited once, so they overlap.
    """

    def __init__(self) -> None:
        self.rank, self.world = _rank_world()

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0] // self.world
        return x[self.rank * b:(self.rank + 1) * b]

    def reduce(self, sae: SparseAutoencoder, st: StepStats) -> StepStats:
        grads = [getattr(sae, p).grad for p in PARAMS]
        n = st.fire_counts.numel()
        stats = torch.cat([st.fire_counts.to(torch.float64),
                           torch.stack([st.loss, st.mse, st.l1, st.aux]).to(torch.float64)])  # [n + 4]
        works = [dist.all_reduce(t, async_op=True) for t in (*grads, stats)]
        for w in works:
            w.wait()
        for g in grads:
            g.div_(self.world)
        terms = (stats[n:] / self.world).float()
        return StepStats(loss=terms[0], mse=terms[1], l1=terms[2], aux=terms[3],
                         fire_counts=stats[:n].round().long(), sparse=st.sparse)


def _check_in_step(trainer: FamilyTrainer) -> None:
    """Raise if any process's weights differ from process 0's (exact comparison)."""
    rank, world = _rank_world()
    if world == 1:
        return
    dev = _comm_device()
    same = True
    with torch.no_grad():
        for m in trainer.members:
            for p in PARAMS:
                t = getattr(m.sae, p).detach()
                buf = t.to(dev).clone()
                dist.broadcast(buf, src=0)
                same &= torch.equal(buf.to(t.device), t)
    errors = [r for r, ok in enumerate(_all_gather_json(same)) if not ok]
    if errors:
        raise RuntimeError(f"mode 'data': the weights of ranks {errors} drifted from rank 0's; the processes "
                           "must run the same torch build on the same kind of device")


def _train_data(saes: list[SparseAutoencoder], source: ActivationSource, cfg: TrainerConfig, out: Path | None,
                device: str | torch.device, progress: bool) -> dict[str, Any]:
    rank, world = _rank_world()
    if source.batch_size % world:
        raise ValueError(f"mode 'data': batch size {source.batch_size} does not split over {world} processes; "
                         f"use a batch size divisible by {world}")
    trainer, error = None, None
    try:
        trainer = FamilyTrainer(saes, source, cfg, out_dir=out, device=device,
                                reducer=DataParallelReducer() if world > 1 else None)
    except ValueError as e:
        error = str(e)
    _agree(error)  # also: every process has read the checkpoint before process 0 may replace it
    if rank != 0:
        trainer.out = None  # process 0 writes checkpoints, snapshots and final/; the others hold the same state
    result = trainer.finish(run_trainer(trainer, progress and rank == 0, f"data x{world}"))
    _check_in_step(trainer)
    result["distributed"] = {"mode": "data", "world_size": world}
    if rank == 0 and out is not None:
        atomic_write_json(out / "train_log.json", result)
    _barrier()
    return result


# ---------------------------------------------------------------------------------------------
# Entry point (library)
# ---------------------------------------------------------------------------------------------


def train_family_distributed(saes: list[SparseAutoencoder], source: ActivationSource, cfg: TrainerConfig,
                             out_dir: str | Path | None = None, device: str | torch.device = "cpu",
                             progress: bool = True, mode: str = "sizes", gather: bool = True) -> dict[str, Any]:
    """:func:`~splitkit.train.train_family` spread over the processes of the default process group.

    Every process calls it with the same ``saes`` (same configs and initial weights), an equal
    ``source``, ``cfg`` and ``out_dir``; ``device`` is this process's (e.g. ``cuda:{LOCAL_RANK}``).
    ``mode``: "sizes" or "data" (module docstring). ``gather`` (mode "sizes"): copy every trained
    dictionary into every process's ``saes``, as ``train_family`` leaves them; with False each process
    holds only its own trained share (the files in ``out_dir`` are complete either way). Progress
    bar on process 0 only. Returns ``train_family``'s summary on every process, plus
    ``"distributed": {"mode", "world_size", ...}``.
    """
    if mode not in MODES:
        raise ValueError(f"train_family_distributed: mode must be one of {MODES}, got {mode!r}")
    if not saes:
        raise ValueError("train_family_distributed: saes is empty; pass at least one SparseAutoencoder")
    out = Path(out_dir) if out_dir is not None else None
    if mode == "sizes":
        return _train_sizes(saes, source, cfg, out, device, progress, gather)
    return _train_data(saes, source, cfg, out, device, progress)


# ---------------------------------------------------------------------------------------------
# Entry point (pipeline and command line)
# ---------------------------------------------------------------------------------------------
def train_pipeline_family(cfg, seed: int, mode: str = "sizes", device: str | None = None,
                          progress: bool = True) -> Path:
    """Build the pipeline's ``dicts`` artifact of LM ``seed`` with every process of the group.

    The same artifact (key, files) that ``pipeline.get_family(cfg, seed)`` builds, so that call
    then finds it ready. Process 0 builds or checks the upstream artifacts while the others wait;
    returns the artifact's folder on every process.
    """
    from . import pipeline
    from .activations import ActivationStore, StoreSource
    from .cache import CacheError
    from .config import ConfigError
    from .corpus import CorpusError

    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {list(MODES)}, got {mode!r}")
    rank, world = _rank_world()
    device = device or cfg.device
    tcfg = pipeline.trainer_config(cfg)
    if mode == "data" and tcfg.batch_size % world:
        raise ConfigError(f"--mode data: the batch size {tcfg.batch_size} does not split over {world} processes; "
                          f"use a process count that divides it")
    info: dict[str, Any] = {}
    if rank == 0:
        try:
            build = pipeline.family_build(cfg, seed, progress)  # the cache entry pipeline.get_family uses
            info = {"store": str(build.store.folder), "path": str(build.artifact.path), "ready": build.ready}
            if not info["ready"]:
                work = build.artifact.begin(resume=True)
                resumed = (work / "checkpoint.json").exists() or any((work / PARTS).glob("*/checkpoint.json"))
                _say(f"training dictionaries {list(cfg.dict.sizes)} ({cfg.dict.recipe}) on LM seed {seed} over "
                     f"{world} process(es), mode {mode!r}: {tcfg.n_steps * tcfg.batch_size:,} tokens"
                     f"{' (resuming)' if resumed else ''} ...")
        except (ConfigError, CorpusError, pipeline.PipelineError, CacheError) as e:
            info = {"error": str(e)}
    info = _broadcast_json(info)
    if "error" in info:
        raise pipeline.PipelineError(info["error"])
    if info["ready"]:
        _say(f"dictionaries already trained: {info['path']}")
        return Path(info["path"])
    store = ActivationStore(Path(info["store"]))
    saes = pipeline.new_family(cfg, store.d)
    source = StoreSource(store, tcfg.batch_size, seed=cfg.dict.seed)
    art_path = Path(info["path"])
    work = art_path.with_name(art_path.name + ".partial")
    res = train_family_distributed(saes, source, tcfg, out_dir=work, device=device, progress=progress,
                                   mode=mode, gather=False)
    if rank == 0:
        pipeline.finish_family(work, tcfg, res)
        art = pipeline.family_artifact(cfg, store)
        art.seal()
        _say(f"dictionaries {list(cfg.dict.sizes)} of LM seed {seed}: {art.path}")
    _barrier()
    return art_path
