"""Training recipes as objects: one class per recipe, registered by name.

A recipe owns everything that differs between ways of training a dictionary: the architecture it
trains, the initialisation, the sparsity penalty (its value and its gradient on the active
entries), the schedules' defaults, the decoder constraint, how dead features are handled
(resampling, or AuxK's dead latents) and the auxiliary loss's weight. The step
(:func:`splitkit.train.step.sae_step`) and the loop (:mod:`splitkit.train.loop`) only call these
methods; adding a recipe is writing one subclass of :class:`Recipe` and decorating it with
:func:`register`.

``"paper"`` -- Bricken et al. 2023, *Towards Monosemanticity* (Problem Setup and the appendix on
    autoencoder training). Loss = MSE (mean over batch and input dims) + lambda * sum_i |f_i|
    (summed over features, averaged over the batch). Adam. Decoder rows kept at unit norm: the
    gradient component parallel to each row is removed before the Adam step and the rows are
    re-normalised after it. b_dec starts at the geometric median of a sample of inputs (Weiszfeld).
    Dead features are resampled at fixed steps (paper: 25k/50k/75k/100k of 1M with a 12,500-step
    dead window; here fractions of ``n_steps``, window = half the spacing as in the paper): a
    feature is dead if it fired on no token in the window; each dead feature gets the direction of
    an input x drawn with probability proportional to the square of the input's reconstruction loss
    ||x - x_hat||^2; decoder row = (x - b_dec) normalised; encoder column = the same scaled to 0.2 x
    the mean norm of the live encoder columns; b_enc = 0; Adam moments of those rows/columns reset.
``"l1_decnorm"`` -- Anthropic's April 2024 update ("Training Sparse Autoencoders", Circuits
    Updates, transformer-circuits.pub/2024/april-update). Penalty lambda * sum_i f_i ||W_dec,i||;
    decoder unconstrained; no resampling; lambda warmed up linearly over the first 5% of steps;
    learning rate decayed linearly to 0 over the last 20%; decoder rows start with norm 0.1 and
    the encoder at the decoder's transpose. b_dec starts at the elementwise mean of the inputs
    (the update starts it at 0 and normalises inputs instead; centring only moves where
    optimisation starts). Gradient clipping, also in the update, is not done here.
``"l1_log"`` -- l1_decnorm (same initialisation and schedules) with two changes that remove its
    near-copies (docs/copies.md: copies form because the L1 penalty is indifferent to how one output
    is split between identical features). (1) Penalty lambda * sum_i phi(f_i ||W_dec,i||) with
    phi(u) = s log(1 + u/s), s = 0.03 (``penalty_scale``): strictly concave, so splitting an output
    between copies costs more than one feature carrying it. (2) A merge step
    (:mod:`splitkit.train.merge`) every 25 steps from 20% to 80% of the run: on the 16 batches
    before the step, features whose activations correlate above 0.9 (both firing on >= 10 tokens)
    are grouped, the most frequent member keeps the group's output (its decoder row takes the
    others' rows weighted by their least-squares activation ratios), the others are re-initialised
    as by the paper's resampling but on distinct inputs (none within cosine 0.7 of a live decoder
    direction or of another pick: the paper's rule piled dozens onto a few badly reconstructed
    tokens, where they became rare copies; docs/copies.md). Used with lambda = 1e-3 (docs/recipes.md).
``"topk"`` -- Gao et al. 2024, *Scaling and evaluating sparse autoencoders* (OpenAI). f keeps the k
    largest pre-activations per token (ReLU'd); loss = MSE + (1/32) * AuxK, where AuxK is the squared
    error between the main residual e = x - x_hat (held fixed) and its reconstruction from the top
    k_aux = d_in/2 pre-activations among dead latents, divided by the residual's variance over the
    batch (their normalised MSE; ours: k_aux = 32 by default, ``TopKRecipe.aux_k_default``); dead = no
    firing in the trainer's dead window (2.5% of the run:
    49k tokens of a 2M-token run; they use 10M tokens of runs of billions). Encoder = decoder
    transpose at init, unit-norm decoder with the parallel gradient removed, b_dec at the geometric
    median. Ours in addition: a latent's Adam moments are zeroed when it goes dead (the fix for the
    dead latents, docs/recipes.md).
``"matryoshka"`` -- Bussmann et al. 2025, *Learning Multi-Level Features with Matryoshka Sparse
    Autoencoders*; Nabeshima 2024, *Matryoshka Sparse Autoencoders*. One dictionary of the family's
    largest size n whose prefixes [0:m_1], ..., [0:n] (the family's sizes) each reconstruct the input
    on their own: loss = sum_p MSE(x, b_dec + f[:, :m_p] @ W_dec[:m_p]) + lambda * sum_i f_i
    ||W_dec,i|| (l1_decnorm's penalty, counted once over the whole dictionary). Equal prefix weights,
    summed as Bussmann et al. do: the finest block's features then face l1_decnorm's trade-off at the
    same lambda (weights 1/P made the penalty P times heavier for them; ``nested.PREFIX_WEIGHT``).
    Bussmann et al. use BatchTopK; we keep ReLU + l1_decnorm's penalty, schedules and initialisation
    (the step's sparse backward is built for a ReLU threshold, and here TopK leaves most latents
    dead: docs/recipes.md). The step is :func:`splitkit.train.nested.nested_step`; the family's
    smaller sizes are saved as prefix dictionaries beside the trained one
    (:meth:`Recipe.family_layout`, :func:`splitkit.train.nested.prefix_dictionary`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..precision import matmul_dtype
from .merge import merge_step
from .nested import nested_step
from .registry import _REGISTRY, get_recipe, recipe_names, register  # noqa: F401  (the registry, from here too)
from .step import Buffers, StepStats, sae_step

if TYPE_CHECKING:
    from ..sae import SparseAutoencoder
    from .config import TrainerConfig
    from .member import Member
    from .source import ActivationSource

@torch.no_grad()
def geometric_median(x: torch.Tensor, n_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Geometric median of the rows of ``x [N, d]`` by Weiszfeld's iterations -> ``[d]`` (fp32)."""
    x = x.float()
    y = x.mean(0)
    for _ in range(n_iter):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-8)  # [N]; clamp guards a point sitting on y
        y_next = (w @ x) / w.sum()
        done = (y_next - y).norm() <= tol * y.norm().clamp_min(1.0)
        y = y_next
        if done:
            break
    return y


# ---------------------------------------------------------------------------------------------
# Sparsity penalties: value and gradient of lambda * P(f) for one batch of B rows
# ---------------------------------------------------------------------------------------------
class L1Penalty:
    """``lambda * sum_i f_i`` (f >= 0), averaged over the batch.

    ``weight``: lambda, the penalty's factor in the loss. ``grad_active``: the gradient of the
    weighted penalty with respect to an active pre-activation, per feature (a float, or ``[n]``).
    ``constant_grad``: that gradient does not depend on the activation (the fused dense kernel then
    adds ``grad_active`` itself); a penalty overriding :meth:`add_dense_grad` sets it False.
    """

    constant_grad = True

    def __init__(self, l1_coeff: float, batch: int) -> None:
        self.weight = l1_coeff
        self.batch = batch
        self.grad_active: float | torch.Tensor = l1_coeff / batch

    def sparse_value(self, W_dec: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """Unweighted penalty from the active pairs (``cols``, ``vals`` [nnz]); adds any decoder gradient."""
        return vals.sum() / self.batch

    def dense_value(self, W_dec: torch.Tensor, f_sum: torch.Tensor) -> torch.Tensor:
        """Unweighted penalty from ``f_sum [n]`` (each feature's sum over the batch); adds any decoder gradient."""
        return f_sum.sum() / self.batch

    def active_grad(self, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """The weighted penalty's gradient at the active pairs (``cols``, ``vals`` [nnz]) -> ``[nnz]``.

        ``grad_active`` spread over the pairs; a penalty whose gradient depends on the activation
        overrides this (and :meth:`add_dense_grad`)."""
        c = self.grad_active
        return c.index_select(0, cols) if isinstance(c, torch.Tensor) else torch.full_like(vals, c)

    def add_dense_grad(self, G: torch.Tensor, f: torch.Tensor) -> None:
        """Dense path: add the weighted penalty's gradient to ``G [r, n]`` (dLoss/df of a chunk of
        rows, before the ReLU mask) given the chunk's activations ``f [r, n]``."""
        c = self.grad_active
        if isinstance(c, torch.Tensor):
            G.add_(c.to(G.dtype))
        elif c:
            G.add_(c)


class DecoderNormL1Penalty(L1Penalty):
    """``lambda * sum_i f_i ||W_dec,i||``: the L1 penalty weighted by each decoder row's norm.

    Norms in fp32 (bf16 would round ||row|| = 1 to 3 digits). The penalty also has a gradient on
    ``W_dec``: ``lambda/B * S_i * W_dec,i / ||W_dec,i||`` with ``S_i`` feature i's sum over the batch.
    """

    def __init__(self, W_dec: torch.Tensor, l1_coeff: float, batch: int) -> None:
        super().__init__(l1_coeff, batch)
        self.dec_norm = W_dec.norm(dim=1)  # [n]
        self.grad_active = self.dec_norm * (l1_coeff / batch)

    def sparse_value(self, W_dec: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        f_sum = torch.zeros(W_dec.shape[0], device=W_dec.device).index_add_(0, cols, vals)  # [n]
        return self.dense_value(W_dec, f_sum)

    def dense_value(self, W_dec: torch.Tensor, f_sum: torch.Tensor) -> torch.Tensor:
        value = torch.dot(f_sum, self.dec_norm) / self.batch
        W_dec.grad.addcmul_(W_dec, (f_sum * (self.weight / self.batch) / self.dec_norm.clamp_min(1e-12)).unsqueeze(1))
        return value


class LogDecNormPenalty(DecoderNormL1Penalty):
    """``lambda * sum_i phi(f_i ||W_dec,i||)`` with ``phi(u) = s log(1 + u/s)`` (docs/copies.md).

    phi(0) = 0 and phi'(0) = 1, so small outputs are penalised as by ``DecoderNormL1Penalty``; phi is
    strictly concave, so splitting one output between copies costs more than keeping it in one
    feature (k phi(u/k) > phi(u)), and large outputs are shrunk less. Gradients (u = f ||d_i||):
    on an active pre-activation ``lambda/B * ||d_i|| / (1 + u/s)``; on the decoder row
    ``lambda/B * (sum_t f / (1 + u/s)) * d_i / ||d_i||``. The dense path accumulates the sums it
    needs chunk by chunk in :meth:`add_dense_grad`.
    """

    constant_grad = False

    def __init__(self, W_dec: torch.Tensor, l1_coeff: float, batch: int, scale: float) -> None:
        super().__init__(W_dec, l1_coeff, batch)
        self.scale = float(scale)
        n = W_dec.shape[0]
        self._phi_sum = torch.zeros(n, device=W_dec.device)  # [n] sum over the batch of phi(u)
        self._w_sum = torch.zeros(n, device=W_dec.device)  # [n] sum over the batch of f / (1 + u/s)

    def active_grad(self, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        c = self.grad_active.index_select(0, cols)  # [nnz] lambda/B ||d_i||
        u = vals * self.dec_norm.index_select(0, cols)
        return c.div_(u.div_(self.scale).add_(1.0))

    def add_dense_grad(self, G: torch.Tensor, f: torch.Tensor) -> None:
        u = f.float() * self.dec_norm  # [r, n]
        self._phi_sum += torch.log1p(u / self.scale).sum(0).mul_(self.scale)
        shrink = u.div_(self.scale).add_(1.0).reciprocal_()  # [r, n] 1 / (1 + u/s)
        self._w_sum += (f.float() * shrink).sum(0)
        G.add_(shrink.mul_(self.grad_active).to(G.dtype))

    def sparse_value(self, W_dec: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        u = vals * self.dec_norm.index_select(0, cols)  # [nnz]
        n = W_dec.shape[0]
        self._phi_sum = torch.zeros(n, device=W_dec.device).index_add_(0, cols, torch.log1p(u / self.scale) * self.scale)
        self._w_sum = torch.zeros(n, device=W_dec.device).index_add_(0, cols, vals / (1.0 + u / self.scale))
        return self.dense_value(W_dec, None)

    def dense_value(self, W_dec: torch.Tensor, f_sum: torch.Tensor | None) -> torch.Tensor:
        """From the sums gathered by :meth:`sparse_value` or :meth:`add_dense_grad` (``f_sum`` unused)."""
        value = self._phi_sum.sum() / self.batch
        W_dec.grad.addcmul_(W_dec, (self._w_sum * (self.weight / self.batch) / self.dec_norm.clamp_min(1e-12)).unsqueeze(1))
        return value


# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FamilyLayout:
    """How a family of sizes is trained: ``trained``, the sizes of the dictionaries actually trained;
    ``prefixes``, the prefix sizes every trained dictionary is trained (and saved) as, ascending
    (empty: none; a nested recipe's prefixes smaller than a dictionary are saved beside it as
    dictionaries of their own, ``sae_{m}``)."""

    trained: tuple[int, ...]
    prefixes: tuple[int, ...] = ()


class Recipe:
    """How a family is trained. Subclasses set the class attributes and override what differs.

    Class attributes: ``name`` (registry key); ``architecture`` ("relu" or "topk", the
    dictionaries it trains); ``uses_k`` (its sparsity is TopK's k, not lambda); ``resamples``
    (resample dead features at ``TrainerConfig.resolved_resample_steps``); ``unit_norm_decoder``;
    ``l1_warmup_frac`` / ``lr_decay_frac`` (schedule defaults, shares of the run); ``default_l1_coeff``
    (lambda when ``DictConfig.l1_coeff`` is left unset; None for recipes without lambda); ``version`` (the
    recipe's own code version: above 0 it enters the cache key of its families, so a change to one
    recipe's training rebuilds only that recipe's families; bump it when their output changes).
    """

    name: ClassVar[str] = ""
    architecture: ClassVar[str] = "relu"
    uses_k: ClassVar[bool] = False
    resamples: ClassVar[bool] = False
    unit_norm_decoder: ClassVar[bool] = True
    l1_warmup_frac: ClassVar[float] = 0.0
    lr_decay_frac: ClassVar[float] = 0.0
    default_l1_coeff: ClassVar[float | None] = None
    version: ClassVar[int] = 0

    # -- initialisation
    @torch.no_grad()
    def init_family(self, saes: list["SparseAutoencoder"], sample: torch.Tensor) -> None:
        """Initialise fresh dictionaries from ``sample [M, d]`` (the first batches): b_dec at the
        geometric median of the sample."""
        centre = geometric_median(sample)
        for sae in saes:
            sae.b_dec.copy_(centre)

    # -- the family's layout
    def family_layout(self, sizes: tuple[int, ...]) -> FamilyLayout:
        """The dictionaries a family of ``sizes`` trains: one per size, no prefixes."""
        return FamilyLayout(trained=tuple(int(s) for s in sizes))

    # -- one step
    def step(self, sae: "SparseAutoencoder", x: torch.Tensor, cfg: "TrainerConfig", *, l1_coeff: float,
             mm_dtype: torch.dtype, dead_mask: torch.Tensor | None, buffers: "Buffers | None") -> "StepStats":
        """Forward and backward of batch ``x [B, d]`` (fills the parameters' ``.grad``): :func:`~.step.sae_step`."""
        return sae_step(sae, x, recipe=self, l1_coeff=l1_coeff, mm_dtype=mm_dtype,
                        sparse_density_max=cfg.sparse_density_max, chunk_elems=cfg.chunk_elems, dead_mask=dead_mask,
                        aux_k=cfg.aux_k, aux_coeff=cfg.aux_coeff, buffers=buffers)

    # -- the loss
    def penalty(self, W_dec: torch.Tensor, l1_coeff: float, batch: int) -> L1Penalty:
        """The sparsity penalty of one step at lambda ``l1_coeff`` over ``batch`` rows."""
        return L1Penalty(l1_coeff, batch)

    def aux_latents(self, steps_since_fired: torch.Tensor, dead_window: int) -> torch.Tensor | None:
        """bool ``[n]``: the latents an auxiliary loss reconstructs the residual from (None: no such loss)."""
        return None

    # -- between steps
    def before_step(self, member: "Member", source: "ActivationSource", step: int, cfg: "TrainerConfig") -> dict | None:
        """Called by the loop before batch ``step`` (after any resampling): a recipe's own change
        to the dictionary (``l1_log``'s merge step); returns a record for the member's log, or None."""
        return None

    # -- the decoder constraint, around the optimiser step
    @torch.no_grad()
    def constrain_gradient(self, sae: "SparseAutoencoder") -> None:
        """Before the step: unit-norm decoders drop the gradient component along each row (fp32: it
        is the small difference of two nearly equal quantities)."""
        if not self.unit_norm_decoder:
            return
        W, gW = sae.W_dec, sae.W_dec.grad
        along = torch.bmm(gW.unsqueeze(1), W.unsqueeze(2)).view(-1, 1)  # [n, 1] row-wise dot, no temp
        gW.addcmul_(W, along, value=-1.0)

    @torch.no_grad()
    def constrain_weights(self, sae: "SparseAutoencoder") -> None:
        """After the step: unit-norm decoders re-normalise their rows."""
        if self.unit_norm_decoder:
            sae.normalize_decoder_()


@register
class PaperRecipe(Recipe):
    """Towards Monosemanticity (2023): L1, unit-norm decoder, resampling of dead features."""

    name = "paper"
    default_l1_coeff = 1.2e-3  # L0 ~14 at 4,096 features, 3M tokens (docs/recipes.md)
    resamples = True


@register
class L1DecNormRecipe(Recipe):
    """Anthropic's April 2024 update: L1 weighted by decoder norms, a free decoder, schedules."""

    name = "l1_decnorm"
    default_l1_coeff = 1.8e-3  # L0 16, 85.7% loss recovered at 2,048 features, 2M tokens
    unit_norm_decoder = False
    l1_warmup_frac = 0.05
    lr_decay_frac = 0.2

    @torch.no_grad()
    def init_family(self, saes: list["SparseAutoencoder"], sample: torch.Tensor) -> None:
        """b_dec at the inputs' mean; decoder rows of norm 0.1, encoder = decoder transpose."""
        centre = sample.mean(0)
        for sae in saes:
            sae.b_dec.copy_(centre)
            sae.W_dec.mul_(0.1 / sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
            sae.W_enc.copy_(sae.W_dec.t())

    def penalty(self, W_dec: torch.Tensor, l1_coeff: float, batch: int) -> L1Penalty:
        return DecoderNormL1Penalty(W_dec, l1_coeff, batch)


@register
class L1LogRecipe(L1DecNormRecipe):
    """l1_decnorm with a concave (log) penalty on each feature's output and a periodic merge of
    co-firing features: the fix for near-copies (docs/copies.md)."""

    name = "l1_log"
    default_l1_coeff = 1e-3  # L0 11-14, 96% loss recovered at 2,048 features, 2M tokens
    # 1: the merge's least-squares ratios summed by numpy (the same at any thread count)
    # 2: a rare-pair merge rule, tried and withdrawn (docs/results.md); its cache entries may exist
    # 3: re-initialised features on distinct inputs (merge.distinct_picks; rare copies, docs/copies.md)
    version = 3
    penalty_scale: ClassVar[float] = 0.03  # s of phi(u) = s log(1 + u/s)
    merges: ClassVar[bool] = True
    merge_every: ClassVar[int] = 25  # steps
    merge_from: ClassVar[float] = 0.2  # shares of n_steps: the window the merge runs in
    merge_until: ClassVar[float] = 0.8
    merge_corr: ClassVar[float] = 0.9  # activation correlation above which two features merge
    merge_min_count: ClassVar[int] = 10  # both must fire on at least this many of the tokens
    merge_batches: ClassVar[int] = 16  # batches before the step the correlation is measured on
    merge_max_cos: ClassVar[float] = 0.7  # a re-initialised feature's input: cosine to live directions and other picks at most this

    def penalty(self, W_dec: torch.Tensor, l1_coeff: float, batch: int) -> L1Penalty:
        return LogDecNormPenalty(W_dec, l1_coeff, batch, self.penalty_scale)

    def merge_due(self, step: int, n_steps: int) -> bool:
        """Whether the merge runs before batch ``step`` of ``n_steps``."""
        return (self.merges and step > 0 and step % self.merge_every == 0
                and self.merge_from * n_steps <= step <= self.merge_until * n_steps)

    def before_step(self, member: "Member", source: "ActivationSource", step: int, cfg: "TrainerConfig") -> dict | None:
        if not self.merge_due(step, cfg.n_steps):
            return None
        return merge_step(member, source, step, cfg.seed, corr=self.merge_corr, min_count=self.merge_min_count,
                          n_batches=self.merge_batches, max_cos=self.merge_max_cos,
                          mm_dtype=matmul_dtype(cfg.matmul_dtype, member.sae.W_enc.device))


@register
class TopKRecipe(Recipe):
    """Gao et al. (2024): k largest pre-activations, no penalty, AuxK on dead latents.

    A latent that has just gone dead (no firing in the last ``dead_window`` steps) has its Adam
    moments zeroed, so that AuxK's gradient, far smaller than the reconstruction gradients its
    second moment still remembers, moves it at the learning rate (docs/recipes.md, "topk")."""

    name = "topk"
    architecture = "topk"
    uses_k = True
    # 1: AuxK normalised by the residual's variance, Adam moments reset on death
    # 2: k_aux = 32 by default instead of d_in / 2 (docs/recipes.md, "topk")
    version = 2
    #: k_aux when ``TrainerConfig.aux_k`` is None. Gao et al. take d_in / 2 (256 here); on our
    #: activations the dead latents' pre-activations are positive, so 256 of them together
    #: reconstruct the residual with small values each and none comes near the top k (50.5% dead at
    #: 4,096 latents, k 16). With 32 each carries a share the size of a live latent's: 11.5% dead at
    #: k 16 (FVU 0.077 against 0.072), 3.0% at k 32 (FVU 0.048); 8 and 16 were worse at k 16.
    aux_k_default: ClassVar[int] = 32

    def step(self, sae: "SparseAutoencoder", x: torch.Tensor, cfg: "TrainerConfig", *, l1_coeff: float,
             mm_dtype: torch.dtype, dead_mask: torch.Tensor | None, buffers: "Buffers | None") -> "StepStats":
        aux_k = cfg.aux_k if cfg.aux_k is not None else self.aux_k_default
        return sae_step(sae, x, recipe=self, l1_coeff=l1_coeff, mm_dtype=mm_dtype,
                        sparse_density_max=cfg.sparse_density_max, chunk_elems=cfg.chunk_elems, dead_mask=dead_mask,
                        aux_k=aux_k, aux_coeff=cfg.aux_coeff, buffers=buffers)

    def penalty(self, W_dec: torch.Tensor, l1_coeff: float, batch: int) -> L1Penalty:
        return L1Penalty(0.0, batch)  # no sparsity penalty: k sets the sparsity (the L1 is still reported)

    def aux_latents(self, steps_since_fired: torch.Tensor, dead_window: int) -> torch.Tensor | None:
        return steps_since_fired >= dead_window

    def before_step(self, member: "Member", source: "ActivationSource", step: int, cfg: "TrainerConfig") -> dict | None:
        """Zero the Adam moments of the latents that went dead at the end of the last step.

        Why: Adam's second moment (beta2 = 0.999, a memory of ~1,000 steps, longer than our runs)
        still holds the reconstruction gradients of the latent's live days, about 10x AuxK's,
        so AuxK moved it at ~1/20 of the learning rate; at that pace the bias falls faster than the
        encoder column turns toward the residual, and the latent sinks further below the top k.
        The state that says when: ``steps_since_fired`` reaches the window exactly once per death,
        so this needs no state of its own and a resumed run resets the same latents."""
        if cfg.aux_coeff <= 0:
            return None
        newly = (member.steps_since_fired == cfg.resolved_dead_window).nonzero().squeeze(1)
        if newly.numel():
            member.reset_moments(newly)
        return None


@register
class MatryoshkaRecipe(L1DecNormRecipe):
    """Bussmann et al. (2025), Nabeshima (2024): one dictionary whose prefixes (the family's sizes)
    each reconstruct on their own; l1_decnorm's penalty, schedules and initialisation."""

    name = "matryoshka"
    default_l1_coeff = 1.8e-3  # as l1_decnorm, whose penalty it keeps
    version = 1  # 1: prefix MSEs summed (the first build, at commit 1e55e9c, averaged them)

    def family_layout(self, sizes: tuple[int, ...]) -> FamilyLayout:
        """One dictionary of the largest size; every size is one of its prefixes."""
        prefixes = tuple(sorted({int(s) for s in sizes}))
        return FamilyLayout(trained=(prefixes[-1],), prefixes=prefixes)

    def step(self, sae: "SparseAutoencoder", x: torch.Tensor, cfg: "TrainerConfig", *, l1_coeff: float,
             mm_dtype: torch.dtype, dead_mask: torch.Tensor | None, buffers: "Buffers | None") -> "StepStats":
        return nested_step(sae, x, prefixes=cfg.prefixes, recipe=self, l1_coeff=l1_coeff, mm_dtype=mm_dtype,
                           sparse_density_max=cfg.sparse_density_max, chunk_elems=cfg.chunk_elems, buffers=buffers)
