"""A learned prior over binary observation masks, p(M), and the partition that samples from it.

Each cell of a mask window (F frames) holds one of two classes, ``missing`` (index 0) or
``observed`` (index 1), encoded as a scaled one-hot logit ``x_0 = K e_c ∈ R²``. A discrete
Bayesian Flow Network in continuous (diffusion) form noises it with a variance-preserving
cosine schedule::

    x_t = α_t x_0 + σ_t ε,   α_t = cos(πt/2),   σ_t = sin(πt/2),   ε ~ N(0, I),   t ∈ [0, 1]

so ``x_1`` is pure noise. Only ``K α_t/σ_t`` reaches the posterior: a cell's log-odds are
about ``K² cot²(πt/2)``, so K sets where along the steps cells are decided. K = 1 spreads the
decisions over the whole sampling grid; with K = 5 they are settled in the first third of the
steps and the rest are idle, which leaves speckle (cloud masks, 32×32, same training: mean
missing cluster 70 cells at K = 1, 53 at K = 3, 44 at K = 5, real 72, with 20 steps).

A network ``ê_θ(t, softmax(x_t))`` predicts the class posterior of every cell; feeding
``softmax(x_t)`` rather than ``x_t`` makes it blind to a constant added to both logits of a
cell, an invariance the true posterior has (with two classes only the logit difference
matters; both logits are kept so the formulas read as for any number of classes). As
``E[x_0 | x_t] = K E[e_c | x_t]``, Tweedie's formula gives the score::

    ∇ log p_t(x_t) = (α_t K ê − x_t) / σ_t²

Training minimises the discrete data-matching loss ``E_{t,ε}[w(t) ‖ê − e_c‖²]`` over in-domain
cells (a Brier score, minimised by the exact posterior) with ``t ~ U(0, 1)``, stratified over
the batch, and ``w(t) = 1``: the sampler steps uniformly in t, so training weights every step of
it alike, and the per-cell loss is bounded by 2 at every t, so no weight is needed to balance it.

Sampling integrates the probability-flow ODE from t = 1 to t = 0. In ``y = x/α`` and
``τ = σ/α`` it reads ``dy/dτ = (y − K ê)/τ``; an Euler step in these variables is::

    x_s = α_s K ê + σ_s (x_t − α_t K ê) / σ_t

which is exact while ê stays constant over the step, and ends on ``x_0 = K ê``; the mask is
the argmax class. Cells outside the domain are predicted ``missing`` with certainty.

Observation-aligned guidance draws a stochastic anchor ``y_i = 1[r_i < ρ] M_i`` once per sample
and adds to every step the gradient of the globally normalised cross-entropy::

    L(x_t, y) = −(1/d) Σ_i [y_i log ê_i + (1 − y_i) log(1 − ê_i)],   x_s ← x_s − w_g ∇_{x_t} L

with ê_i the predicted probability that cell i is observed and d the in-domain cells of the
sample. Because of the 1/d, the step per cell is about w_g/d, so the default is w_g = 0.03 d.
Cells anchored at 0 (missing in M or left out of the anchor) are pushed towards ``missing``, so
a strong guidance thins the draws towards the anchor itself.

The ``prior`` partition (:class:`ctxq_cli.partition.IntersectionPartition` with a pool from
:func:`draw_pool`) intersects the observation with a prior mask, ``M_ctx = M̂ ∧ M`` and
``M_qry = M ∧ ¬M_ctx``: any observed cell is a query whenever M̂ misses it, which a prior
that puts positive mass on every mask does with positive probability, whatever the topology.

Masks are boolean tensors (B, F, H, W); domains (B, 1, H, W) or (H, W), True inside.

References:
    Incomplete Data, Complete Dynamics: A Diffusion Approach (ICLR 2026), section 4.
    Graves et al., Bayesian Flow Networks (2023).
    Song et al., Denoising Diffusion Implicit Models (ICLR 2021).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ctxq_cli.partition import uniform, with_query
from ctxq_cli.unet import UNet, UNetConfig

log = logging.getLogger(__name__)

MISSING, OBSERVED = 0, 1      # class indices on the class axis of latents and predictions
_OUTSIDE_LOGIT = 30.0         # logit margin that makes out-of-domain cells certainly missing
DEFAULT_CELL_WEIGHT = 0.03    # default guidance weight w_g per in-domain cell of a sample


@dataclass(frozen=True)
class MaskPriorConfig:
    """Architecture and scale of the mask prior."""

    frames: int = 3                      # F, frames of a mask window
    scale: float = 1.0                   # K, the scaled-logit magnitude x_0 = K e_c
    channels: tuple[int, ...] = (32, 64)
    blocks_per_level: int = 1
    embedding: int = 64
    patch: int = 1                       # space-to-depth factor of the UNet stem

    @property
    def multiple(self) -> int:
        """Grid sizes the network takes are multiples of this (others are padded)."""
        return self.unet().multiple

    def unet(self) -> UNetConfig:
        """Backbone: softmax of 2 classes × F frames plus the domain in, 2 × F logits out."""
        return UNetConfig(in_channels=2 * self.frames + 1, out_channels=2 * self.frames,
                          channels=tuple(self.channels), blocks_per_level=self.blocks_per_level,
                          embedding=self.embedding, patch=self.patch)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskPriorConfig:
        """Inverse of ``to_dict``."""
        return cls(**{**d, "channels": tuple(d["channels"])})


def alpha_sigma(t: Tensor) -> tuple[Tensor, Tensor]:
    """Cosine variance-preserving schedule: α_t = cos(πt/2), σ_t = sin(πt/2)."""
    angle = 0.5 * math.pi * t
    return torch.cos(angle).clamp(min=0.0), torch.sin(angle).clamp(min=0.0)


def noise_conditioning(t: Tensor) -> Tensor:
    """Network noise input log(σ_t/α_t)/4, bounded at the ends of [0, 1]: (B,) -> (B,)."""
    alpha, sigma = alpha_sigma(t)
    return 0.25 * (torch.log(sigma.clamp(min=1e-4)) - torch.log(alpha.clamp(min=1e-4)))


class MaskPrior(nn.Module):
    """Class-posterior network ê_θ(t, softmax(x_t)) over a window of mask frames."""

    def __init__(self, config: MaskPriorConfig) -> None:
        super().__init__()
        self.config = config
        self.net = UNet(config.unet())

    def forward(self, x: Tensor, t: Tensor, domain: Tensor) -> Tensor:
        """Class logits: x (B, F, 2, H, W), t (B,), domain (B, 1, H, W) -> (B, F, 2, H, W).

        H and W must be multiples of ``config.multiple``. Out-of-domain cells come out as
        ``missing`` with certainty, whatever their latent.
        """
        b, f, _, h, w = x.shape
        inside = domain.to(x.dtype)
        probs = torch.softmax(x, dim=2) * inside[:, :, None]          # (B, F, 2, H, W)
        out = self.net(torch.cat([probs.reshape(b, 2 * f, h, w), inside], dim=1),
                       noise_conditioning(t)).view(b, f, 2, h, w)
        outside = torch.tensor([_OUTSIDE_LOGIT, -_OUTSIDE_LOGIT], dtype=out.dtype,
                               device=out.device).view(1, 1, 2, 1, 1)
        return torch.where(domain[:, :, None].bool(), out, outside)


# ----------------------------------------------------------------------------- helpers

def _normal(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """N(0, 1) draws from an explicit generator (on the generator's device, then moved)."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _batch_domain(domain: Tensor | None, b: int, h: int, w: int,
                  device: torch.device) -> Tensor:
    """Any domain form ((H, W), (1, H, W), (B, 1, H, W) or None) as bool (B, 1, H, W)."""
    if domain is None:
        return torch.ones(b, 1, h, w, dtype=torch.bool, device=device)
    d = domain.to(device=device, dtype=torch.bool)
    while d.dim() < 4:
        d = d[None]
    return d.expand(b, 1, h, w)


def _pad(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad (False for bool) the last two dimensions up to a multiple."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    if x.dtype == torch.bool:
        return F.pad(x.to(torch.uint8), (0, pw, 0, ph)).bool()
    return F.pad(x, (0, pw, 0, ph))


def _one_hot(masks: Tensor, dtype: torch.dtype) -> Tensor:
    """Bool (B, F, H, W) -> one-hot classes (B, F, 2, H, W), index 1 = observed."""
    obs = masks.to(dtype)
    return torch.stack([1 - obs, obs], dim=2)


# ----------------------------------------------------------------------------- loss

def mask_prior_loss(model: MaskPrior, masks: Tensor, domain: Tensor | None,
                    generator: torch.Generator) -> Tensor:
    """Discrete data-matching loss: mean over in-domain cells of ‖ê − e_c‖², t ~ U(0, 1).

    masks: (B, F, H, W) bool; domain: (B, 1, H, W), (H, W) or None (everywhere). Cells outside
    the domain neither enter the loss nor reach the network. One t per sample, stratified.
    """
    b, _, h, w = masks.shape
    dev = masks.device
    dom = _batch_domain(domain, b, h, w, dev)
    config = getattr(model, "module", model).config   # the network inside a DDP wrapper
    m = config.multiple
    dom, masks = _pad(dom, m), _pad(masks & dom, m)
    target = _one_hot(masks, torch.float32)                         # (B, F, 2, H', W')
    t = (torch.arange(b, device=dev) + uniform((b,), generator, dev)) / b
    alpha, sigma = (v.view(-1, 1, 1, 1, 1) for v in alpha_sigma(t))
    x = alpha * config.scale * target + sigma * _normal(target.shape, generator, dev)
    probs = torch.softmax(model(x, t, dom), dim=2)
    err = ((probs - target) ** 2).sum(dim=2)                        # (B, F, H', W')
    inside = dom.to(err.dtype).expand_as(err)
    return (err * inside).sum() / inside.sum().clamp(min=1)


# ----------------------------------------------------------------------------- sampling

@dataclass
class Guidance:
    """Observation-aligned guidance towards a real observation mask M.

    On cloud masks hiding 30 % the defaults raised the context ratio |M̂ ∧ M| / |M| from 0.71
    to 0.85, with the density of the draws 0.66 against 0.71 and 60 % of their variation from
    draw to draw; larger ρ or w_g make the draws collapse onto the anchor.
    """

    observed: Tensor             # (B, F, H, W) bool, B = the number of samples or 1
    rho: float = 0.5             # share of M's observed cells kept in the anchor
    weight: float | None = None  # w_g; None: 0.03 d, d the in-domain cells of each sample

    def weights(self, domain: Tensor, frames: int) -> Tensor:
        """w_g per sample (B,), from the domain (B, 1, H, W) when ``weight`` is None."""
        if self.weight is not None:
            return torch.full((domain.shape[0],), float(self.weight), device=domain.device)
        return DEFAULT_CELL_WEIGHT * frames * domain.sum(dim=(1, 2, 3)).float()


def guidance_loss(logits: Tensor, anchor: Tensor, domain: Tensor) -> Tensor:
    """Globally normalised cross-entropy per sample: logits (B, F, 2, H, W) -> (B,).

    anchor (B, F, H, W) bool; domain (B, 1, H, W); the sum runs over in-domain cells and is
    divided by their number, whatever the anchor's density.
    """
    logp = torch.log_softmax(logits, dim=2)
    y = anchor.to(logp.dtype)
    ce = -(y * logp[:, :, OBSERVED] + (1 - y) * logp[:, :, MISSING])   # (B, F, H, W)
    inside = domain.to(ce.dtype).expand_as(ce)
    return (ce * inside).sum(dim=(1, 2, 3)) / inside.sum(dim=(1, 2, 3)).clamp(min=1)


def time_grid(steps: int, device: torch.device | None = None) -> Tensor:
    """Sampling times 1 → 0, uniform in t: (steps + 1,)."""
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


def _integrate(model: MaskPrior, x: Tensor, domain: Tensor, steps: int,
               anchor: Tensor | None = None, weight: Tensor | None = None) -> Tensor:
    """Probability-flow ODE from t = 1 to 0, guided when an anchor is given; returns x_0.

    x: (B, F, 2, H, W) latents at t = 1; domain (B, 1, H, W); anchor (B, F, H, W) bool;
    weight (B,) the guidance weights w_g.
    """
    k = model.config.scale
    ts = time_grid(steps, x.device)
    for i in range(steps):
        t = ts[i].expand(x.shape[0])
        (a_t, s_t), (a_s, s_s) = alpha_sigma(ts[i]), alpha_sigma(ts[i + 1])
        if anchor is None:
            with torch.no_grad():
                probs = torch.softmax(model(x, t, domain), dim=2)
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                logits = model(xg, t, domain)
                grad, = torch.autograd.grad(guidance_loss(logits, anchor, domain).sum(), xg)
            probs = torch.softmax(logits.detach(), dim=2)
        x0 = k * probs
        x = a_s * x0 + (s_s / s_t) * (x - a_t * x0)
        if anchor is not None:
            x = x - weight.view(-1, 1, 1, 1, 1) * grad
    return x.detach()


def sample_masks(model: MaskPrior, count: int, grid: tuple[int, int] | Tensor, steps: int,
                 generator: torch.Generator, guidance: Guidance | None = None,
                 batch_size: int = 64) -> Tensor:
    """Draw ``count`` mask windows from the prior: bool (count, F, H, W).

    ``grid`` is (H, W) (domain everywhere) or a bool domain (H, W), (1, H, W) or
    (count, 1, H, W); cells outside it are False. ``steps`` ≥ 1 network passes per mask
    (twice the cost with guidance, which also back-propagates). All random numbers (initial
    latents, then anchors) are drawn from ``generator`` before integrating, so the masks
    depend on its state only, not on ``batch_size``. Runs on the model's device.
    """
    if steps < 1:
        raise ValueError("sampling needs at least one step")
    dev = next(model.parameters()).device
    domain = grid if isinstance(grid, Tensor) else None
    h, w = grid.shape[-2:] if isinstance(grid, Tensor) else grid
    f, m = model.config.frames, model.config.multiple
    dom = _batch_domain(domain, count, h, w, dev)
    noise = _normal((count, f, 2, h, w), generator, dev)
    anchors = weights = None
    if guidance is not None:
        obs = guidance.observed.to(dev).bool().expand(count, f, h, w)
        anchors = obs & (uniform((count, f, h, w), generator, dev) < guidance.rho) & dom
        weights = guidance.weights(dom, f)
    out = []
    for lo in range(0, count, batch_size):
        s = slice(lo, min(lo + batch_size, count))
        d = _pad(dom[s], m)
        a = None if anchors is None else _pad(anchors[s], m)
        x = _integrate(model, _pad(noise[s], m), d, steps, a,
                       None if weights is None else weights[s])
        out.append(((x[:, :, OBSERVED] > x[:, :, MISSING]) & d)[..., :h, :w])
    return torch.cat(out)


# ----------------------------------------------------------------------------- diagnostics

def intersection_context(prior_masks: Tensor, observed: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Context M̂ ∧ M, query M ∧ ¬context, and the context ratio |M̂ ∧ M| / |M| per sample (B,).

    prior_masks, observed: (B, F, H, W) bool; a sample with no observed cell has ratio 0.
    """
    context = prior_masks & observed
    query = observed & ~context
    ratio = context.sum(dim=(1, 2, 3)).float() / observed.sum(dim=(1, 2, 3)).clamp(min=1).float()
    return context, query, ratio


# ----------------------------------------------------------------------------- pool

def draw_pool(model: MaskPrior, count: int, grid: tuple[int, int] | Tensor, steps: int,
              generator: torch.Generator, batch_size: int = 64,
              guidance: Guidance | None = None) -> Tensor:
    """A pool of ``count`` prior masks (CPU bool) for the ``prior`` intersection partition.

    Drawing costs ``steps`` network passes per mask (guided: with back-propagation too). On
    64×64×3 windows with 10 steps, guided masks for a batch of 16 took as long as 6 training
    steps of the default denoiser, unguided ones 3, a draw from a pool 0.6 ms; so training
    draws its contexts from a pool drawn once. The price: the context ratio |M̂ ∧ M| / |M|
    is about the prior's density (0.71 for clouds hiding 30 %; guided draws reached 0.85).
    """
    pool = sample_masks(model, count, grid, steps, generator, guidance, batch_size).cpu()
    h, w = pool.shape[-2:]
    inside = (grid.cpu().bool().reshape(-1, h, w).any(dim=0) if isinstance(grid, Tensor)
              else torch.ones(h, w, dtype=torch.bool))
    always = pool.all(dim=(0, 1)) & inside
    if always.any():
        log.warning("%d in-domain cells are observed in every pool mask: where a batch lines "
                    "up with them they are never queried; draw a larger pool", int(always.sum()))
    return pool


@dataclass
class GuidedPriorPartition:
    """Context = M ∧ M̂ with M̂ drawn afresh from the prior, guided towards M itself.

    Used at imputation, where each ensemble member's context follows the member's own
    observation window; costs ``steps`` guided network passes per draw.
    """

    model: MaskPrior
    domain: Tensor                 # (H, W) bool, the prior's grid
    steps: int = 10
    rho: float = 0.5
    cell_weight: float = DEFAULT_CELL_WEIGHT    # w_g per in-domain cell of a window
    overlap: float = 0.0
    name: str = "prior"
    ratios: list[float] = field(default_factory=list)   # |M̂ ∧ M| / |M| of every draw

    def sample(self, observed: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw (context, query) for observed (B, F, H', W') with H', W' ≥ the prior's grid."""
        b, f, hp, wp = observed.shape
        h, w = self.domain.shape
        weight = self.cell_weight * f * float(self.domain.sum())
        guide = Guidance(observed[..., :h, :w].cpu(), self.rho, weight)
        drawn = sample_masks(self.model, b, self.domain, self.steps, generator, guide)
        prior = F.pad(drawn.to(torch.uint8), (0, wp - w, 0, hp - h)).bool().to(observed.device)
        self.ratios += intersection_context(prior, observed)[2].tolist()
        return with_query(observed, prior, self.overlap, generator)

    def config(self) -> dict[str, Any]:
        """Parameters (the network is stored with the denoiser)."""
        return {"name": self.name, "overlap": self.overlap, "steps": self.steps,
                "rho": self.rho, "cell_weight": self.cell_weight}
