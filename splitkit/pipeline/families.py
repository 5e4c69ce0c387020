"""The dictionary stage: a family of dictionaries trained in one pass over one run's activations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..cache import Artifact, atomic_write_json
from ..config import Config
from .acts import get_acts
from .core import VERSIONS, PipelineError, _cache, _claim, _say


@dataclass
class Family:
    """A trained family of dictionaries (one per size) on the activations of LM ``seed``."""

    folder: Path
    key: str
    seed: int
    sizes: tuple[int, ...]

    def sae_dir(self, n: int, snapshot_step: int | None = None) -> Path:
        if n not in self.sizes:
            raise PipelineError(f"no dictionary of size {n} in this family (sizes {list(self.sizes)})")
        if snapshot_step is None:
            return self.folder / "final" / f"sae_{n}"
        return self.folder / "snapshots" / f"step_{snapshot_step}" / f"sae_{n}"

    def sae(self, n: int, snapshot_step: int | None = None, device: str = "cpu"):
        from ..sae import SparseAutoencoder

        return SparseAutoencoder.load(self.sae_dir(n, snapshot_step), device=device)

    def sae_id(self, n: int) -> str:
        return f"lm{self.seed}-n{n}-{self.key[:6]}"

    @property
    def train_summary(self) -> dict:
        return json.loads((self.folder / "train_summary.json").read_text())


def trainer_config(cfg: Config):
    """The one conversion from the study's ``DictConfig`` (tokens) to the trainer's ``TrainerConfig`` (steps)."""
    from ..train import TrainerConfig, get_recipe

    dc = cfg.dict
    n_steps = max(1, dc.n_tokens // dc.batch_size)
    snaps = tuple(sorted({max(1, t // dc.batch_size) for t in dc.snapshot_tokens if t // dc.batch_size < n_steps}))
    return TrainerConfig(recipe=dc.recipe, lr=dc.lr, l1_coeff=dc.lam if dc.lam is not None else 0.0,
                         prefixes=get_recipe(dc.recipe).family_layout(dc.sizes).prefixes,
                         k=dc.k if get_recipe(dc.recipe).uses_k else None, n_steps=n_steps, batch_size=dc.batch_size,
                         matmul_dtype=dc.matmul_dtype, seed=dc.seed, snapshot_steps=snaps,
                         checkpoint_every=dc.checkpoint_every, lr_decay_frac=dc.lr_decay_frac, target_l0=dc.target_l0,
                         **({} if dc.l0_gain is None else {"l0_gain": dc.l0_gain}),
                         l1_warmup_frac=None if dc.l1_warmup_tokens is None
                         else min(1.0, dc.l1_warmup_tokens / (n_steps * dc.batch_size)))


def family_artifact(cfg: Config, store) -> Artifact:
    """The cache entry of the family trained on activation ``store`` (also used by ``distributed``).

    A recipe with a ``version`` above 0 adds it to the key (the other recipes' keys are unchanged)."""
    from ..train import get_recipe

    params = {"dict": cfg.dict.key_dict(), "d_in": store.d}
    if get_recipe(cfg.dict.recipe).version:
        params["recipe_version"] = get_recipe(cfg.dict.recipe).version
    return _cache(cfg).artifact("dicts", params, {"acts": store.folder.name}, VERSIONS["dicts"])


def new_family(cfg: Config, d_in: int) -> list:
    """Freshly initialised dictionaries the family trains, in ``cfg.dict.sizes`` order: one per size, or
    what the recipe's ``family_layout`` says (a nested recipe: one of the largest size, whose prefixes
    are the other sizes and are saved as dictionaries of their own when training ends)."""
    from ..sae import SAEConfig, SparseAutoencoder
    from ..train import get_recipe

    recipe = get_recipe(cfg.dict.recipe)
    return [SparseAutoencoder(SAEConfig(d_in=d_in, n_features=n, architecture=recipe.architecture,
                                        k=cfg.dict.k if recipe.uses_k else None, seed=cfg.dict.seed))
            for n in recipe.family_layout(cfg.dict.sizes).trained]


def finish_family(work: Path, tcfg, res: dict) -> None:
    """Write the prefix dictionaries of a nested recipe (again: per-process parts publish only the
    trained members), the family's train summary, and drop its resume state (checkpoints, parts)."""
    import shutil

    from ..train.checkpoint import write_family_views

    write_family_views(work, {name: rec["n_features"] for name, rec in res["saes"].items()}, tcfg)

    atomic_write_json(work / "train_summary.json", {"trainer": tcfg.to_dict(), **res})
    for f in [*work.glob("checkpoint*"), work / "parts"]:
        if f.is_dir():
            shutil.rmtree(f)
        elif f.exists():
            f.unlink()


@dataclass
class FamilyBuild:
    """What building the family of LM ``seed`` takes: its training store, its cache entry and the
    trainer config; ``ready`` when the entry is already complete (one process or many,
    ``distributed.train_pipeline_family``, build it from this)."""

    store: object  # activations.ActivationStore
    artifact: Artifact
    tcfg: object  # train.TrainerConfig
    ready: bool


def family_build(cfg: Config, seed: int, progress: bool = True) -> FamilyBuild:
    """Build (or reuse) everything upstream of the family of LM ``seed`` and say whether it is cached."""
    store = get_acts(cfg, seed, progress=progress)
    art = family_artifact(cfg, store)
    return FamilyBuild(store, art, trainer_config(cfg), _claim(art))


def get_family(cfg: Config, seed: int, progress: bool = True) -> Family:
    from ..activations import StoreSource
    from ..train import train_family

    build = family_build(cfg, seed, progress)
    store, art, tcfg = build.store, build.artifact, build.tcfg
    if not build.ready:
        work = art.begin(resume=True)
        resumed = (work / "checkpoint.json").exists()
        _say(f"training dictionaries {list(cfg.dict.sizes)} ({cfg.dict.recipe}) on LM seed {seed}: "
             f"{tcfg.n_steps * tcfg.batch_size:,} tokens{' (resuming)' if resumed else ''} ...")
        source = StoreSource(store, tcfg.batch_size, seed=cfg.dict.seed)
        res = train_family(new_family(cfg, store.d), source, tcfg, out_dir=work, device=cfg.device,
                           progress=progress)
        finish_family(work, tcfg, res)
        art.seal()
    return Family(art.path, art.key, seed, tuple(cfg.dict.sizes))
