"""Checkpoints (resume state) and snapshots of a family's members, as safetensors and JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..sae import SparseAutoencoder, atomic_save_tensors, atomic_write_json
from .config import TrainerConfig
from .member import PARAMS, TRAINER_FORMAT_VERSION, Member
from .nested import prefix_dictionary

CHECKPOINT_POINTER = "checkpoint.json"
L0_CONTROL_FILE = "l0_control.json"


def write_member(m: Member, folder: Path, step: int, with_training_state: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    m.sae.save(folder)
    atomic_save_tensors(folder / "density.safetensors", m.density_tensors())
    if m.l0ctl is not None:  # target, final lambda and L0 of a run whose lambda was steered (cfg.target_l0)
        atomic_write_json(folder / L0_CONTROL_FILE, m.l0_record())
    if with_training_state:
        atomic_save_tensors(folder / "optimizer.safetensors", m.optim_tensors())
        atomic_save_tensors(folder / "stats.safetensors", m.stats_tensors())
        atomic_write_json(folder / "state.json", m.state_json(step))  # last: marks the folder complete


def write_views(folder: Path, members: dict[str, int], cfg: TrainerConfig) -> list[int]:
    """Save each member's prefix dictionaries (``cfg.prefixes`` below its size) beside it in ``folder``.

    ``folder``: a ``final/`` or ``snapshots/step_k/`` folder holding the members' saved folders;
    ``members``: name -> n_features. Prefix m goes to ``folder/sae_{m}`` with the first m entries of
    the member's firing counts. Rewrites what is there (so it can run again after the members'
    folders moved, as ``distributed`` does). Returns the sizes written; none without prefixes.
    """
    written = []
    for name, n in members.items():
        views = [m for m in cfg.prefixes if m < n]
        src = folder / name
        if not views or not (src / "cfg.json").is_file():
            continue
        sae = SparseAutoencoder.load(src)
        dens = load_file(str(src / "density.safetensors"))
        for m in views:
            dst = folder / f"sae_{m}"
            prefix_dictionary(sae, m).save(dst)
            atomic_save_tensors(dst / "density.safetensors",
                                {k: (v[:m].contiguous() if k.endswith("_counts") else v) for k, v in dens.items()})
            written.append(m)
    return written


def write_family_views(out_dir: Path, members: dict[str, int], cfg: TrainerConfig) -> None:
    """:func:`write_views` in ``out_dir/final`` and every ``out_dir/snapshots/step_*``."""
    for folder in [out_dir / "final", *sorted((out_dir / "snapshots").glob("step_*"))]:
        if folder.is_dir():
            write_views(folder, members, cfg)


def save_checkpoint(out_dir: Path, step: int, members: list[Member], cfg: TrainerConfig,
                     elapsed_s: float = 0.0) -> None:
    folder = out_dir / f"checkpoint_step{step:09d}"
    if folder.exists():
        shutil.rmtree(folder)
    for m in members:
        write_member(m, folder / m.name, step, with_training_state=True)
    atomic_write_json(folder / "family.json", {"step": step, "names": [m.name for m in members],
                                               "trainer_config": cfg.to_dict(), "elapsed_s": elapsed_s})
    # The pointer is written last and atomically: a crash at any point leaves the previous
    # checkpoint in force.
    atomic_write_json(out_dir / CHECKPOINT_POINTER, {"step": step, "folder": folder.name,
                                                     "format_version": TRAINER_FORMAT_VERSION})
    for old in out_dir.glob("checkpoint_step*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)


class _Unreadable(Exception):
    """A checkpoint file that is missing, truncated or not what it should be."""


def _read(fn, path: Path):
    try:
        return fn(path)
    except Exception as e:  # json, safetensors and our own loaders raise many types for a cut-short file
        raise _Unreadable(f"{path.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _read_json(path: Path) -> dict:
    return _read(lambda p: json.loads(p.read_text()), path)


def _read_member(sub: Path, m: Member, step: int) -> dict:
    state = _read_json(sub / "state.json")
    if state.get("step") != step:
        raise _Unreadable(f"{sub.name}/state.json: step {state.get('step')} != checkpoint step {step}")
    loaded = _read(lambda p: SparseAutoencoder.load(p, expect_d_in=m.sae.d_in), sub)
    if loaded.cfg != m.sae.cfg:
        raise ValueError(f"{sub}: checkpoint dictionary config {loaded.cfg} != given {m.sae.cfg}")
    return {"state": state, "sae": loaded, "optim": _read(lambda p: load_file(str(p)), sub / "optimizer.safetensors"),
            "stats": _read(lambda p: load_file(str(p)), sub / "stats.safetensors")}


def load_checkpoint(out_dir: Path, members: list[Member], cfg: TrainerConfig) -> tuple[int, float] | None:
    """Restore every member from ``out_dir``'s checkpoint; returns (step, training seconds so far).

    Everything is read and checked before any member changes. A checkpoint that cannot be read (a
    truncated file, say) is set aside as ``*.unreadable`` and None is returned: training restarts
    from step 0 instead of failing on every rerun. A checkpoint of another family or config is an
    error (ValueError), not a restart: it means the folder is not this run's.
    """
    try:
        pointer = _read_json(out_dir / CHECKPOINT_POINTER)
        folder = out_dir / str(pointer.get("folder"))
        family = _read_json(folder / "family.json")
        names = [m.name for m in members]
        if family["names"] != names:
            raise ValueError(f"{folder}: checkpoint holds dictionaries {family['names']}, this family is {names}")
        saved = TrainerConfig.from_dict(family["trainer_config"])
        if saved != cfg:
            diff = sorted(k for k, v in saved.to_dict().items() if cfg.to_dict()[k] != v)
            raise ValueError(f"{folder}: checkpoint was trained with a different TrainerConfig (fields {diff})")
        step = int(pointer["step"])
        payloads = [_read_member(folder / m.name, m, step) for m in members]
    except (_Unreadable, KeyError, TypeError) as e:
        _set_aside(out_dir, f"{e}")
        return None
    for m, got in zip(members, payloads):
        state, stats = got["state"], got["stats"]
        with torch.no_grad():
            for p in PARAMS:
                getattr(m.sae, p).copy_(getattr(got["sae"], p))
        m.load_optim_tensors(got["optim"])
        dev = m.steps_since_fired.device
        m.steps_since_fired = stats["steps_since_fired"].to(dev)
        m.window_counts = stats["window_counts"].to(dev)
        m.last_window_counts = stats["last_window_counts"].to(dev)
        m.tokens_seen = int(state["tokens_seen"])
        m.window_tokens = int(state["window_tokens"])
        m.last_window_tokens = int(state["last_window_tokens"])
        m.log = state["log"]
        m.resamples = state["resamples"]
        if m.l0ctl is not None:
            m.l0ctl.load_state(state["l0_control"])
    return step, float(family.get("elapsed_s", 0.0))


def _set_aside(out_dir: Path, reason: str) -> None:
    import sys

    for p in [out_dir / CHECKPOINT_POINTER, *out_dir.glob("checkpoint_step*")]:
        if p.exists() and not p.name.endswith(".unreadable"):
            os.replace(p, p.with_name(p.name + ".unreadable"))
    print(f"[splitkit] {out_dir}: resume checkpoint unreadable ({reason[:160]}); set aside as *.unreadable, "
          "training restarts from step 0", file=sys.stderr, flush=True)
