"""Trained models with everything needed to use them, saved to and rebuilt from one file.

A denoiser trained with the ``prior`` partition carries its mask prior inside its own file
(weights under ``extra.prior.``), so imputing needs the denoiser's checkpoint only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctxq_cli import checkpoint
from ctxq_cli.data import Normalization
from ctxq_cli.diffusion import Denoiser, NoiseSchedule
from ctxq_cli.errors import CtxqError
from ctxq_cli.maskprior import MaskPrior, MaskPriorConfig
from ctxq_cli.partition import Partition, build_partition
from ctxq_cli.provenance import TrainingData
from ctxq_cli.temporal import SmootherConfig
from ctxq_cli.unet import UNetConfig

KIND = "denoiser"
PRIOR_KIND = "mask-prior"
PRIOR = "prior."


@dataclass
class MaskPriorModel:
    """A mask prior network (EMA weights), its window, training domain and fidelity report."""

    network: MaskPrior
    domain: np.ndarray                       # (H, W) bool
    step: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)   # real vs sampled mask statistics

    @property
    def window(self) -> int:
        """Frames per mask window."""
        return self.network.config.frames

    def metadata(self) -> dict[str, Any]:
        """The JSON document stored with the weights."""
        return {"kind": PRIOR_KIND, "model": self.network.config.to_dict(),
                "grid": list(self.domain.shape), "step": self.step, "training": self.training,
                "fidelity": self.fidelity}

    def save(self, path: Path | str) -> None:
        """Write the prior to a safetensors checkpoint."""
        checkpoint.save(path, self.metadata(), self.network.state_dict(),
                        {"domain": torch.from_numpy(self.domain.astype(np.uint8))})

    @classmethod
    def from_parts(cls, path: Path | str, meta: dict[str, Any], weights: dict[str, torch.Tensor],
                   domain: torch.Tensor, device: torch.device | str = "cpu") -> MaskPriorModel:
        """Rebuild from metadata, weights and domain (a prior's own file or a denoiser's)."""
        try:
            network = MaskPrior(MaskPriorConfig.from_dict(meta["model"]))
            network.load_state_dict(weights)
            return cls(network=network.to(device).eval(), domain=domain.numpy().astype(bool),
                       step=int(meta.get("step", 0)), training=dict(meta.get("training", {})),
                       fidelity=dict(meta.get("fidelity", {})))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CtxqError(f"{path}: incompatible or corrupted mask-prior checkpoint "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu") -> MaskPriorModel:
        """Rebuild a prior from its checkpoint file alone."""
        ckpt = checkpoint.load(path, PRIOR_KIND)
        if "domain" not in ckpt.extras:
            raise CtxqError(f"{path}: mask-prior checkpoint without its domain; corrupted")
        return cls.from_parts(path, ckpt.meta, ckpt.weights, ckpt.extras["domain"], device)


def _check_numbers(model: DenoiserModel) -> None:
    """Refuse metadata whose numbers would poison every output (a damaged file)."""
    norm, sched = model.normalization, model.schedule
    good = (all(math.isfinite(m) for m in norm.mean)
            and all(math.isfinite(s) and s > 0 for s in norm.std)
            and math.isfinite(model.denoiser.sigma_data) and model.denoiser.sigma_data > 0
            and 0 < sched.sigma_min < sched.sigma_max < math.inf)
    if not good:
        raise ValueError("normalisation or noise schedule out of range")


@dataclass
class DenoiserModel:
    """Denoiser network, noise schedule, normalisation, partition, window, grid and domain."""

    denoiser: Denoiser
    schedule: NoiseSchedule
    normalization: Normalization
    partition: Partition
    variables: list[str]
    window: int
    domain: np.ndarray                       # (H, W) bool, the training domain
    step: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    mask_prior: MaskPriorModel | None = None   # for the ``prior`` partition
    smoother: SmootherConfig | None = None      # the first guess from the whole record
    data: TrainingData | None = None            # units, grid and values it was trained on

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the training grid."""
        return self.domain.shape[0], self.domain.shape[1]

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Refuse a grid other than the training grid when the model is tied to it."""
        self.normalization.check_grid(grid)
        if self.denoiser.net.position is not None and tuple(grid) != self.grid:
            raise ValueError(f"the model learned a position map on grid {self.grid}, and "
                             f"cannot fill grid {tuple(grid)}")

    def metadata(self) -> dict[str, Any]:
        """The JSON document stored with the weights."""
        return {
            "kind": KIND,
            "model": self.denoiser.net.config.to_dict(),
            "sigma_data": self.denoiser.sigma_data,
            "schedule": self.schedule.to_dict(),
            "normalization": self.normalization.to_dict(),
            "partition": self.partition.config(),
            "variables": self.variables,
            "window": self.window,
            "grid": list(self.grid),
            "step": self.step,
            "training": self.training,
            "temporal": None if self.smoother is None else self.smoother.to_dict(),
            "data": None if self.data is None else self.data.to_dict(),
        }

    def save(self, path: Path | str, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write the model (or the given weights, e.g. EMA) to a safetensors checkpoint."""
        extras = {"domain": torch.from_numpy(self.domain.astype(np.uint8))}
        if self.normalization.cell_mean is not None:
            extras["cell_mean"] = torch.from_numpy(self.normalization.cell_mean)
        meta = self.metadata()
        masks = self.partition.masks()
        if masks is not None:   # boolean, stored bit-packed
            pool = masks.cpu().numpy()
            extras["mask_pool"] = torch.from_numpy(np.packbits(pool.ravel()))
            meta["mask_pool_shape"] = list(pool.shape)
        if self.mask_prior is not None:
            meta["mask_prior"] = self.mask_prior.metadata()
            extras.update({PRIOR + k: v for k, v in self.mask_prior.network.state_dict().items()})
            extras[PRIOR + "domain"] = torch.from_numpy(self.mask_prior.domain.astype(np.uint8))
        checkpoint.save(path, meta, weights or self.denoiser.state_dict(), extras)

    @classmethod
    def load(cls, path: Path | str, device: torch.device | str = "cpu") -> DenoiserModel:
        """Rebuild a model from a checkpoint file alone."""
        ckpt = checkpoint.load(path, KIND)
        meta = ckpt.meta
        try:
            cfg = meta["model"]
            config = UNetConfig(**{**cfg, "channels": tuple(cfg["channels"]),
                                   "grid": tuple(cfg["grid"]) if cfg.get("grid") else None})
            smoother = (SmootherConfig.from_dict(meta["temporal"]) if meta.get("temporal")
                        else None)
            denoiser = Denoiser(config, sigma_data=float(meta.get("sigma_data", 1.0)),
                                first_guess=smoother is not None)
            denoiser.load_state_dict(ckpt.weights)
            pool = None
            if "mask_pool" in ckpt.extras:  # bit-packed boolean masks
                shape = meta["mask_pool_shape"]
                bits = np.unpackbits(ckpt.extras["mask_pool"].numpy(), count=int(np.prod(shape)))
                pool = torch.from_numpy(bits.reshape(shape).astype(bool))
            model = cls(
                denoiser=denoiser.to(device).eval(),
                schedule=NoiseSchedule(**meta["schedule"]),
                normalization=Normalization(
                    **{k: tuple(v) for k, v in meta["normalization"].items()},
                    cell_mean=(ckpt.extras["cell_mean"].numpy() if "cell_mean" in ckpt.extras
                               else None)),
                partition=build_partition(meta["partition"], pool),
                variables=list(meta["variables"]),
                window=int(meta["window"]),
                domain=ckpt.extras["domain"].numpy().astype(bool),
                step=int(meta.get("step", 0)),
                training=dict(meta.get("training", {})),
                smoother=smoother,
                data=TrainingData.from_dict(meta["data"]) if meta.get("data") else None,
            )
            _check_numbers(model)
            if "mask_prior" in meta:
                prior = {k[len(PRIOR):]: v for k, v in ckpt.extras.items() if k.startswith(PRIOR)}
                model.mask_prior = MaskPriorModel.from_parts(
                    path, meta["mask_prior"], {k: v for k, v in prior.items() if k != "domain"},
                    prior["domain"], device)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CtxqError(f"{path}: incompatible or corrupted denoiser checkpoint "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
        return model
