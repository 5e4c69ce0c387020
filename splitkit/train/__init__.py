"""Training a family of dictionaries (different sizes, same inputs) in one pass over the activations.

``source`` (where batches come from), ``recipes`` (one object per recipe, registered by name),
``config`` (``TrainerConfig``), ``step`` (forward and hand-written backward of one batch),
``member`` (one dictionary's optimiser and firing statistics), ``resample`` (dead features),
``checkpoint`` (resume state and snapshots) and ``loop`` (``FamilyTrainer``, ``train_family``).

Matmul precision: ``matmul_dtype="bfloat16"`` runs the big GEMMs in bf16 (fp32 master weights,
loss, Adam state and decoder-norm maths, because bf16 keeps ~3 significant digits: Adam's second
moment and the norms of near-unit rows would lose most of their information); ``"auto"`` follows
:mod:`splitkit.precision`. Adam is torch's fused kernel. On a 2-core machine shared with other jobs,
``torch.set_num_threads(1)`` can beat 2 threads: each parallel op then stops waiting for a second
core that is busy elsewhere.

Determinism: every random draw is keyed by (seed, step, dictionary), and the source is asked for
batch ``step``; so a run resumed from a checkpoint is bitwise identical to an uninterrupted one on
CPU, and a dictionary trained inside a family is bitwise identical to it trained alone.
"""

from .config import TrainerConfig
from .loop import FamilyTrainer, run_trainer, train_family
from .member import StepReducer
from .recipes import Recipe, get_recipe, recipe_names, register
from .source import ActivationSource, TensorSource
from .step import StepStats, sae_step

__all__ = ["ActivationSource", "FamilyTrainer", "Recipe", "StepReducer", "StepStats", "TensorSource",
           "TrainerConfig", "get_recipe", "recipe_names", "register", "run_trainer", "sae_step", "train_family"]
