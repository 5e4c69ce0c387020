"""The sparse autoencoder (dictionary) of Bricken et al. 2023, as a small ``nn.Module``.

Form (the paper's, with row-vector shapes)::

    x_bar = x - b_dec                       # [..., d_in]
    pre   = x_bar @ W_enc + b_enc           # [..., n]
    f     = ReLU(pre)                       # "relu"; "topk" keeps the k largest of each row, ReLU'd
    x_hat = f @ W_dec + b_dec               # [..., d_in]

Parameters (fp32): ``W_enc [d_in, n]``, ``b_enc [n]``, ``W_dec [n, d_in]`` (one dictionary
direction per row), ``b_dec [d_in]``. The methods here are the plain autograd reference; the
trainer (`splitkit.train`) runs its own hand-written forward and backward for speed.

Files: ``save``/``load`` write our layout, ``cfg.json`` (versioned) + ``sae_weights.safetensors``;
``to_saelens``/``from_saelens`` write and read SAELens' layout (v6: ``cfg.json`` with ``d_in``,
``d_sae``, ``architecture`` "standard" or "topk", ``dtype``, ``device``, ``apply_b_dec_to_input``,
``normalize_activations``, ``metadata``...; weights ``W_enc [d_in, d_sae]``, ``b_enc``,
``W_dec [d_sae, d_in]``, ``b_dec``), so a dictionary trained in SAELens loads here and vice versa.
No pickle anywhere: JSON and safetensors only; every file is written to a temporary name and moved
into place with ``os.replace``, so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .cache import atomic_save_safetensors as atomic_save_tensors
from .cache import atomic_write_json

__all__ = ["SAEConfig", "SparseAutoencoder", "FORMAT_VERSION"]

FORMAT_VERSION = 1
ARCHITECTURES = ("relu", "topk")


def strict_from_dict(cls, data: dict[str, Any]):
    """``cls(**data)`` for a dataclass ``cls``, refusing keys it does not have (one-line ValueError)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}.from_dict: unknown keys {unknown}; allowed {sorted(known)}")
    return cls(**data)
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
_PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
# Our architecture name <-> SAELens' (both use x - b_dec at the encoder input and ReLU after topk).
_TO_SAELENS_ARCH = {"relu": "standard", "topk": "topk"}
_FROM_SAELENS_ARCH = {v: k for k, v in _TO_SAELENS_ARCH.items()}


@dataclass(frozen=True)
class SAEConfig:
    """Shape and kind of one dictionary.

    d_in: input width (512 MLP neurons in the paper). n_features: dictionary size.
    architecture: "relu" (the paper) or "topk" (Gao et al. 2024; needs ``k``). seed: initialisation.
    """

    d_in: int = 512
    n_features: int = 4096
    architecture: str = "relu"
    k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_in", "n_features", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"SAEConfig.{name} must be an int, got {value!r}")
        if self.d_in < 1 or self.n_features < 1:
            raise ValueError(
                f"SAEConfig d_in and n_features must be >= 1, got d_in={self.d_in}, "
                f"n_features={self.n_features}"
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"SAEConfig.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.architecture == "topk":
            if not isinstance(self.k, int) or isinstance(self.k, bool) or not 1 <= self.k <= self.n_features:
                raise ValueError(
                    f"SAEConfig.k must be an int in [1, n_features={self.n_features}] for topk, got {self.k!r}"
                )
        elif self.k is not None:
            raise ValueError(f"SAEConfig.k must be None for architecture 'relu', got {self.k!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        return strict_from_dict(cls, data)


class SAEFormatError(ValueError):
    """A dictionary folder that cannot be read as it claims to be; the message names the file."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a dictionary folder with {CFG_FILENAME}")
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except (ValueError, UnicodeDecodeError) as e:
        raise SAEFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise SAEFormatError(f"{path}: expected a JSON object of settings, got {type(raw).__name__}")
    return raw


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise SAEFormatError(f"{path} not found: the dictionary folder has no weights") from None
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise SAEFormatError(f"{path}: unreadable safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


class SparseAutoencoder(nn.Module):
    """One dictionary. ``encode(x [..., d_in]) -> f [..., n]``, ``decode(f) -> x_hat [..., d_in]``."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_in, cfg.n_features
        gen = torch.Generator().manual_seed(cfg.seed)
        # Kaiming-uniform (the paper's init) on the decoder, then each row scaled to unit norm as the
        # paper's constraint demands. Only the rows' directions survive the normalisation.
        W_dec_FD = torch.empty(n, d)
        nn.init.kaiming_uniform_(W_dec_FD, a=math.sqrt(5), generator=gen)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec = nn.Parameter(W_dec_FD)
        # Encoder = decoder transpose at init (Gao et al. 2024; Anthropic's April 2024 update): each
        # feature then starts out firing on the inputs that point along its own dictionary direction,
        # so encoder and decoder begin consistent and far fewer features die in the first steps than
        # with an independent random encoder. Scaled by min(1, 2 d / n): about half of the n
        # features fire on an input x and each adds ~(x.w) w, so W_dec^T W_dec / 2 ~ n / (2 d) x;
        # the factor makes the first reconstructions about the input's size instead of n / (2 d)
        # times it (8x at n = 4096, d = 512), which otherwise costs tens of steps to undo.
        scale = min(1.0, 2.0 * d / n)
        self.W_enc = nn.Parameter((W_dec_FD.t() * scale).contiguous())  # [d, n], row-major
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(d))

    # ------------------------------------------------------------------ shapes
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    # ------------------------------------------------------------------ maths
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d_in] -> (x - b_dec) @ W_enc + b_enc [..., n]``."""
        return (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``f [..., n]`` of inputs ``x [..., d_in]``."""
        return self.activation(self.pre_activations(x))

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """``f [..., n]`` from pre-activations ``pre [..., n]``: ReLU, or the top k of them ReLU'd."""
        if self.cfg.architecture == "topk":
            vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        return pre.relu()

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``x_hat [..., d_in]`` of feature activations ``f [..., n]``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``x_hat [..., d_in]`` of ``x [..., d_in]``."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale every decoder row to unit L2 norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # ------------------------------------------------------------------ files
    def _weights(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach() for name in _PARAM_NAMES}

    def save(self, path: str | Path) -> Path:
        """Write ``cfg.json`` + ``sae_weights.safetensors`` into folder ``path`` (created if needed).

        The weights are written first and ``cfg.json`` last, each atomically, so a folder whose
        ``cfg.json`` exists holds a complete dictionary.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path / WEIGHTS_FILENAME, self._weights(), metadata={"format": "splitkit.sae"})
        atomic_write_json(path / CFG_FILENAME, {"format": "splitkit.sae", "format_version": FORMAT_VERSION,
                                                **self.cfg.to_dict()})
        return path

    @classmethod
    def load(cls, path: str | Path, expect_d_in: int | None = None, device: str | torch.device = "cpu"
             ) -> "SparseAutoencoder":
        """Read a folder written by ``save``. ``expect_d_in``: raise ValueError if the width differs."""
        path = Path(path)
        raw = _read_json(path / CFG_FILENAME)
        if raw.get("format") != "splitkit.sae":
            hint = " (it looks like SAELens' layout: use from_saelens)" if "d_sae" in raw else ""
            raise ValueError(f"{path / CFG_FILENAME} is not a splitkit dictionary{hint}")
        version = raw.pop("format_version", None)
        raw.pop("format")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {version} unsupported, this code reads {FORMAT_VERSION}")
        try:
            cfg = SAEConfig.from_dict(raw)
        except (TypeError, ValueError) as e:
            raise SAEFormatError(f"{path / CFG_FILENAME}: {e}") from None
        return cls._from_tensors(cfg, _load_weights(path / WEIGHTS_FILENAME), path, expect_d_in, device)

    @classmethod
    def _from_tensors(cls, cfg: SAEConfig, tensors: dict[str, torch.Tensor], path: Path,
                      expect_d_in: int | None, device: str | torch.device) -> "SparseAutoencoder":
        if expect_d_in is not None and cfg.d_in != expect_d_in:
            raise SAEFormatError(f"{path}: dictionary has d_in={cfg.d_in}, expected d_in={expect_d_in} (an SAE of another width)")
        missing = [k for k in _PARAM_NAMES if k not in tensors]
        extra = sorted(set(tensors) - set(_PARAM_NAMES))
        if missing or extra:
            raise SAEFormatError(f"{path}: weights missing {missing}, unexpected {extra}; need {list(_PARAM_NAMES)}")
        sae = cls.__new__(cls)
        nn.Module.__init__(sae)
        sae.cfg = cfg
        d, n = cfg.d_in, cfg.n_features
        want = {"W_enc": (d, n), "b_enc": (n,), "W_dec": (n, d), "b_dec": (d,)}
        for name in _PARAM_NAMES:
            t = tensors[name]
            if tuple(t.shape) != want[name]:
                raise SAEFormatError(f"{path}: {name} has shape {tuple(t.shape)}, expected {want[name]} from {CFG_FILENAME}")
            setattr(sae, name, nn.Parameter(t.to(device=device, dtype=torch.float32).contiguous()))
        return sae

    def to_saelens(self, path: str | Path) -> Path:
        """Write SAELens' v6 layout (``architecture`` "standard" for relu, "topk" for topk)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        cfg: dict[str, Any] = {
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.n_features,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            # SAELens keeps free-form metadata here; we store what its layout has no field for.
            "metadata": {"splitkit_seed": self.cfg.seed, "splitkit_format_version": FORMAT_VERSION},
            "architecture": _TO_SAELENS_ARCH[self.cfg.architecture],
        }
        if self.cfg.architecture == "topk":
            cfg["k"] = self.cfg.k
            cfg["rescale_acts_by_decoder_norm"] = False
        atomic_save_tensors(path / WEIGHTS_FILENAME, self._weights())
        atomic_write_json(path / CFG_FILENAME, cfg)
        return path

    @classmethod
    def from_saelens(cls, path: str | Path, expect_d_in: int | None = None,
                     device: str | torch.device = "cpu") -> "SparseAutoencoder":
        """Read a folder in SAELens' layout (v6, or older configs with ``activation_fn`` "topk").

        Accepts architectures "standard" and "topk" with ``normalize_activations`` "none" and no
        decoder-norm rescaling; anything else has no exact equivalent here and raises ValueError.
        ``apply_b_dec_to_input: false`` is folded into ``b_enc`` (exact up to float rounding).
        """
        path = Path(path)
        raw = _read_json(path / CFG_FILENAME)
        if raw.get("format") == "splitkit.sae":
            raise ValueError(f"{path} is in splitkit's own layout: use SparseAutoencoder.load")
        arch = raw.get("architecture", "standard")
        act = raw.get("activation_fn", raw.get("activation_fn_str"))
        k = raw.get("k")
        if act == "topk" and arch == "standard":  # pre-6.0 SAELens configs
            arch, k = "topk", (raw.get("activation_fn_kwargs") or {}).get("k")
        if arch not in _FROM_SAELENS_ARCH:
            raise ValueError(f"{path}: SAELens architecture {arch!r} unsupported; allowed {sorted(_FROM_SAELENS_ARCH)}")
        norm = raw.get("normalize_activations", "none")
        if norm not in ("none", False, None):
            raise ValueError(f"{path}: normalize_activations={norm!r} unsupported (allowed 'none'); "
                             "fold the normalisation into the weights first")
        if raw.get("rescale_acts_by_decoder_norm", False):
            raise ValueError(f"{path}: rescale_acts_by_decoder_norm=True unsupported; fold decoder norms first")
        meta = raw.get("metadata") or {}
        missing = [f for f in ("d_in", "d_sae") if f not in raw] + (["k"] if arch == "topk" and k is None else [])
        if missing:
            raise SAEFormatError(f"{path / CFG_FILENAME}: SAELens config lacks {missing}")
        try:
            cfg = SAEConfig(d_in=int(raw["d_in"]), n_features=int(raw["d_sae"]), architecture=_FROM_SAELENS_ARCH[arch],
                            k=int(k) if arch == "topk" else None, seed=int(meta.get("splitkit_seed", 0)))
        except (TypeError, ValueError) as e:
            raise SAEFormatError(f"{path / CFG_FILENAME}: {e}") from None
        tensors = _load_weights(path / WEIGHTS_FILENAME)
        scale = tensors.pop("scaling_factor", None)
        if scale is not None and not torch.all(scale == 1):
            raise ValueError(f"{path}: a finetuning scaling_factor other than 1 is unsupported")
        if not raw.get("apply_b_dec_to_input", True):
            # SAELens then encodes x @ W_enc + b_enc; ours subtracts b_dec first, so move it into b_enc.
            W_enc, b_dec = tensors["W_enc"].float(), tensors["b_dec"].float()
            tensors["b_enc"] = tensors["b_enc"].float() + b_dec @ W_enc
        return cls._from_tensors(cfg, tensors, path, expect_d_in, device)
