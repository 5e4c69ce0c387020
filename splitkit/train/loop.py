"""The family loop: every dictionary of a family steps on the same batch (``FamilyTrainer``, ``train_family``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from ..progress import bar as tqdm

from ..precision import matmul_dtype
from ..sae import SparseAutoencoder, atomic_write_json
from .checkpoint import CHECKPOINT_POINTER, load_checkpoint, save_checkpoint, write_member, write_views
from .config import TrainerConfig
from .member import Member, StepReducer, member_names, train_member_step
from .resample import resample, sample_inputs
from .source import ActivationSource


@torch.no_grad()
def _init_fresh(members: list[Member], source: ActivationSource, cfg: TrainerConfig, device: torch.device) -> None:
    sample = sample_inputs(source, 16384, 0, device)  # [M, d], the first batches
    cfg.recipe_object.init_family([m.sae for m in members], sample)



class FamilyTrainer:
    """The loop of ``train_family``, one step at a time (``train_step``), for callers that time or
    interleave steps. Construction validates, moves the dictionaries to ``device``, and resumes from
    ``out_dir``'s checkpoint when there is one (else initialises b_dec etc. for the recipe).
    ``reducer``: data parallelism over processes (:class:`StepReducer`); None trains here alone."""

    def __init__(self, saes: list[SparseAutoencoder], source: ActivationSource, cfg: TrainerConfig,
                 out_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 reducer: StepReducer | None = None) -> None:
        if not saes:
            raise ValueError("train_family: saes is empty; pass at least one SparseAutoencoder")
        if not isinstance(source, ActivationSource):
            raise ValueError("train_family: source must have d, batch_size, n_tokens and get_batch(step)")
        d_ins = sorted({s.d_in for s in saes})
        if d_ins != [source.d]:
            raise ValueError(f"train_family: dictionaries have d_in {d_ins}, source has d={source.d}")
        recipe = cfg.recipe_object
        for s in saes:
            if s.cfg.architecture != recipe.architecture:
                raise ValueError(f"train_family: recipe {cfg.recipe!r} needs {recipe.architecture} dictionaries, "
                                 f"got {s.cfg.architecture!r}")
            if recipe.uses_k and cfg.k is not None and s.cfg.k != cfg.k:
                raise ValueError(f"train_family: TrainerConfig.k={cfg.k} but a dictionary has k={s.cfg.k}")
        if cfg.snapshot_steps and out_dir is None:
            raise ValueError("train_family: snapshot_steps need an out_dir to write to")
        self.cfg = cfg
        self.source = source
        self.device = torch.device(device)
        self.mm_dtype = matmul_dtype(cfg.matmul_dtype, self.device)
        names = member_names(saes)
        clash = sorted({f"sae_{p}" for s in saes for p in cfg.prefixes if p < s.n_features} & set(names))
        if clash:
            raise ValueError(f"train_family: prefix dictionaries {clash} would overwrite members of the same name; "
                             "train one dictionary per nested family")
        for s in saes:
            s.to(self.device)
        self.members = [Member(s, name, cfg, self.device) for s, name in zip(saes, names)]
        self.out = Path(out_dir) if out_dir is not None else None
        self.step = 0  # steps done so far = index of the next batch
        self.elapsed_before = 0.0  # training seconds of earlier sessions (resumed runs)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            if (self.out / CHECKPOINT_POINTER).is_file():
                self.step, self.elapsed_before = load_checkpoint(self.out, self.members, cfg) or (0, 0.0)
        self._t_start = time.perf_counter()
        if self.step == 0:
            _init_fresh(self.members, source, cfg, self.device)
        self._resample_at = set(cfg.resolved_resample_steps)
        self._snapshots = set(cfg.snapshot_steps)
        self.tokens_run = 0  # tokens trained in this session (not counting a resumed prefix)
        self.reducer = reducer  # data parallelism (splitkit.distributed); None: this process alone

    @torch.no_grad()
    def train_step(self, write: Any = None) -> None:
        """Resample if due, run the recipe's ``before_step`` (l1_log: merge), fetch batch ``self.step``, step every dictionary on it, then snapshot /
        checkpoint if due. ``write``: a callable for messages (e.g. ``tqdm.write``)."""
        cfg, step = self.cfg, self.step
        if step >= cfg.n_steps:
            raise ValueError(f"FamilyTrainer.train_step: all n_steps={cfg.n_steps} steps are done")
        if step in self._resample_at:
            for m in self.members:
                rec = resample(m, self.source, step, cfg, self.device)
                m.resamples.append(rec)
                if write is not None:
                    write(f"step {step} {m.name}: resampled {rec['n_resampled']}, dead {rec['dead_before']} "
                          f"-> {rec['dead_after']}")
        recipe = cfg.recipe_object
        for m in self.members:  # a recipe's own change between steps (l1_log's merge), like resampling
            rec = recipe.before_step(m, self.source, step, cfg)
            if rec is not None:
                m.resamples.append(rec)
                if write is not None:
                    write(f"step {step} {m.name}: {rec.get('kind', 'recipe')} re-initialised {rec['n_resampled']}")
        x = self.source.get_batch(step).to(device=self.device, dtype=torch.float32)  # [B, d], fetched once
        for m in self.members:
            train_member_step(m, x, step, cfg, self.mm_dtype, self.reducer)
        self.tokens_run += x.shape[0]
        self.step = done = step + 1
        if self.out is not None:
            if done in self._snapshots:
                snap = self.out / "snapshots" / f"step_{done}"
                for m in self.members:
                    write_member(m, snap / m.name, done, with_training_state=False)
                write_views(snap, self.member_sizes, cfg)
                atomic_write_json(snap / "snapshot.json", {"step": done, "tokens": self.members[0].tokens_seen,
                                                           "elapsed_s": self.elapsed_total})
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.n_steps:
                save_checkpoint(self.out, done, self.members, cfg, self.elapsed_total)

    @property
    def member_sizes(self) -> dict[str, int]:
        """Member name -> n_features."""
        return {m.name: m.sae.n_features for m in self.members}

    @property
    def elapsed_total(self) -> float:
        """Training wall seconds from the first step, summed over resumed sessions."""
        return self.elapsed_before + time.perf_counter() - self._t_start

    def summary(self, elapsed_s: float = 0.0) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.members[0].tokens_seen,
            "elapsed_s": elapsed_s,
            "elapsed_total_s": self.elapsed_total,
            "tokens_per_s": self.tokens_run / elapsed_s if elapsed_s > 0 else 0.0,
            "matmul_dtype": str(self.mm_dtype).replace("torch.", ""),
            "saes": {m.name: m.summary() for m in self.members},
        }

    def finish(self, elapsed_s: float = 0.0) -> dict[str, Any]:
        """Write ``final/`` and ``train_log.json`` (with an out_dir) and return the summary."""
        result = self.summary(elapsed_s)
        if self.out is not None:
            for m in self.members:
                write_member(m, self.out / "final" / m.name, self.step, with_training_state=False)
            write_views(self.out / "final", self.member_sizes, self.cfg)
            atomic_write_json(self.out / "train_log.json", result)
        return result


def train_family(saes: list[SparseAutoencoder], source: ActivationSource, cfg: TrainerConfig,
                 out_dir: str | Path | None = None, device: str | torch.device = "cpu",
                 progress: bool = True) -> dict[str, Any]:
    """Train every dictionary in ``saes`` (same ``d_in``, any sizes) on the same batches, in place.

    Batch ``step`` is fetched once from ``source`` and every dictionary takes one step on it.
    With ``out_dir``: checkpoints every ``cfg.checkpoint_every`` steps and at the end (resumed
    automatically when ``out_dir`` holds one), snapshots at ``cfg.snapshot_steps`` in
    ``out_dir/snapshots/step_{k}/sae_{n}/``, and the trained dictionaries with their firing counts
    in ``out_dir/final/sae_{n}/``; a nested recipe's prefixes (``cfg.prefixes``) below a dictionary's
    size are saved beside it as ``sae_{m}`` (:func:`~.checkpoint.write_views`). Returns ``{"step", "tokens", "elapsed_s", "tokens_per_s",
    "matmul_dtype", "saes": {name: {"n_features", "tokens_seen", "log": {step, loss, mse, l1, aux,
    l0, sparse}, "resamples": [{step, dead_before, n_resampled, dead_after}, or a recipe's own records such as l1_log's
    {step, kind: "merge", pairs, groups, n_resampled}], "dead",
    "last_window_tokens"}}}`` (names: ``sae_{n}``, or ``sae_{n}_seed{s}`` when sizes repeat).
    """
    trainer = FamilyTrainer(saes, source, cfg, out_dir=out_dir, device=device)
    return trainer.finish(run_trainer(trainer, progress))


def run_trainer(trainer: FamilyTrainer, progress: bool = True, desc: str | None = None) -> float:
    """Step ``trainer`` until ``n_steps`` with a progress bar; returns this session's wall seconds."""
    cfg, members = trainer.cfg, trainer.members
    bar = tqdm(total=cfg.n_steps, initial=trainer.step, disable=not progress, unit="step", dynamic_ncols=True,
               desc=desc or "dictionaries")
    t0 = time.perf_counter()
    while trainer.step < cfg.n_steps:
        trainer.train_step(write=bar.write if progress else None)
        done = trainer.step
        if progress and (done % cfg.log_every == 0 or done == cfg.n_steps):
            rate = trainer.tokens_run / max(time.perf_counter() - t0, 1e-9)
            losses = " ".join(f"{m.last.loss.item():.4g}" for m in members)
            l0s = " ".join(f"{m.last.fire_counts.sum().item() / trainer.source.batch_size:.1f}" for m in members)
            bar.set_postfix_str(f"tok/s={rate:,.0f} loss=[{losses}] L0=[{l0s}]")
        bar.update(1)
    bar.close()
    return time.perf_counter() - t0
