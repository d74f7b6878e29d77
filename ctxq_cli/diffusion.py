"""Context-query denoising diffusion: preconditioned denoiser, loss and samplers.

Noise process (variance exploding, EDM parametrisation): ``u_σ = u_0 + σ ε``. The denoiser
sees only the context cells of the noisy observation and predicts the clean field everywhere::

    D(u_σ, σ, M_ctx) ≈ E[u_0 | M_ctx ⊙ u_σ, M_ctx]

On context cells it is skip-preconditioned, ``c_skip u_σ + c_out F``, so it only learns a
correction; elsewhere the network output ``F`` is the clean value itself, because a skip from
a cell with no input would force ``F`` to grow like 1/σ. With a first guess ``g`` computed from
the context (the temporal smoother of :mod:`ctxq_cli.temporal`: its mean and standard deviation
are extra inputs), the output there is ``g + F`` and ``F`` starts at zero, so an untrained
denoiser returns the first guess and training learns what it misses. The loss lives on query
cells only::

    L = Σ M_qry ⊙ (D(M_ctx ⊙ u_σ, σ, M_ctx) − u_obs)² / Σ M_qry

Inference (Work I):

- single step: ``û = (1/K) Σ_k D(M_ctx^(k) ⊙ u_δ, δ, M_ctx^(k))`` with K context masks
  drawn by the training partition at a small noise δ;
- multi step: a deterministic sampler from σ_max to δ whose clean estimate blends
  ``ω_s E[u_0 | u_σ] + (1 − ω_s) μ_0`` (μ_0 the single-step ensemble mean, ω_s rising from 0
  to 1); observed cells follow ``u_obs + σ ε_obs`` (RePaint), the rest the ODE.

References:
    Karras et al., Elucidating the Design Space of Diffusion-Based Generative Models (2022).
    Incomplete Data, Complete Dynamics: A Diffusion Approach (ICLR 2026).
    Lugmayr et al., RePaint (2022).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ctxq_cli.partition import Partition
from ctxq_cli.unet import UNet, UNetConfig


@dataclass(frozen=True)
class NoiseSchedule:
    """Training noise distribution and sampling grid."""

    sigma_min: float = 0.002
    sigma_max: float = 20.0
    p_mean: float = -1.2
    p_std: float = 1.2
    low_noise_fraction: float = 0.8   # share of training draws at sigma_min (the S=1 regime)
    rho: float = 7.0

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """Training noise levels (n,): log-normal, with a share pinned at sigma_min."""
        z = torch.randn(n, generator=generator, device=generator.device).to(device)
        sigma = torch.exp(self.p_mean + self.p_std * z).clamp(self.sigma_min, self.sigma_max)
        low = torch.rand(n, generator=generator, device=generator.device).to(device)
        return torch.where(low < self.low_noise_fraction, torch.full_like(sigma, self.sigma_min),
                           sigma)

    def grid(self, steps: int, device: torch.device) -> Tensor:
        """Decreasing noise levels sigma_max → sigma_min (steps,), Karras spacing."""
        i = torch.arange(steps, device=device, dtype=torch.float64) / max(steps - 1, 1)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return ((hi + i * (lo - hi)) ** self.rho).float()

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


FirstGuess = Callable[[Tensor], Tensor]   # context mask (B, F, H, W) -> (B, 2F, H, W)


class Denoiser(nn.Module):
    """Preconditioned x0-predictor over context-masked noisy fields (and a first guess)."""

    def __init__(self, config: UNetConfig, sigma_data: float = 1.0,
                 first_guess: bool = False) -> None:
        super().__init__()
        self.net = UNet(config)
        self.sigma_data = sigma_data
        self.first_guess = first_guess
        if first_guess:   # start from the first guess: the correction begins at zero
            head = self.net.head[-1]
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @staticmethod
    def input_channels(fields: int, first_guess: bool = False) -> int:
        """Network input channels for F field channels: values, context mask, domain (and the
        first guess's mean and standard deviation)."""
        return 2 * fields + 1 + (2 * fields if first_guess else 0)

    def forward(self, noisy: Tensor, sigma: Tensor, context: Tensor, domain: Tensor,
                positions: Tensor | None = None, first_guess: Tensor | None = None) -> Tensor:
        """noisy, context: (B, F, H, W); sigma: (B,); domain: (B, 1, H, W) -> (B, F, H, W).

        ``positions`` (B, 2, H, W) or (2, H, W): the training-grid (row, column) of a patch or tile
        (None: the grid). ``first_guess`` (B, 2F, H, W): mean and standard deviation computed
        from the context, for a denoiser built with one.
        """
        if self.first_guess != (first_guess is not None):
            raise ValueError("the denoiser was built " + ("with" if self.first_guess else
                                                          "without") + " a first guess")
        sd = self.sigma_data
        s = sigma.view(-1, 1, 1, 1)
        c_in = 1 / torch.sqrt(s ** 2 + sd ** 2)
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / torch.sqrt(s ** 2 + sd ** 2)
        ctx = context.to(noisy.dtype)
        inside = domain.to(noisy.dtype)
        parts = [c_in * noisy * ctx, ctx, inside]
        if first_guess is not None:
            # Outside the domain (land, the padding to the network's multiple) the smoother
            # has nothing to say and its numbers there are not bounded (tens of the field's
            # scale on A1B's padding, varying with every window): seen by the network they
            # key each window, which it then memorises, and they differ between training and
            # impute. So they are zero, as the context is.
            first_guess = first_guess.to(noisy.dtype) * inside
            parts.append(first_guess)
        out = self.net(torch.cat(parts, dim=1), torch.log(sigma) / 4, positions)
        filled = out if first_guess is None else first_guess[:, :out.shape[1]] + out
        return torch.where(context, c_skip * noisy + c_out * out, filled)


def add_noise(values: Tensor, sigma: Tensor, generator: torch.Generator) -> Tensor:
    """u_σ = u + σ ε with ε from ``generator``; sigma (B,)."""
    eps = torch.randn(values.shape, generator=generator, device=generator.device)
    return values + sigma.view(-1, 1, 1, 1) * eps.to(values.device)


def context_query_loss(denoiser: Denoiser, values: Tensor, observed: Tensor, domain: Tensor,
                       partition: Partition, schedule: NoiseSchedule,
                       generator: torch.Generator, positions: Tensor | None = None,
                       first_guess: FirstGuess | None = None,
                       query_only: Tensor | None = None) -> Tensor:
    """Mean squared error of the denoiser on query cells, given a noisy context.

    The first guess, when given, is computed from the context alone. ``query_only`` (bool, like
    ``observed``) restricts the query to those cells (validation on held-out cells).
    """
    context, query = partition.sample(observed, generator)
    if query_only is not None:
        context, query = context & ~query_only, query & query_only
    sigma = schedule.sample(values.shape[0], generator, values.device)
    noisy = add_noise(values, sigma, generator) * context
    guess = None if first_guess is None else first_guess(context)
    pred = denoiser(noisy, sigma, context, domain, positions, guess)
    q = query.to(pred.dtype)
    return ((pred - values) ** 2 * q).sum() / q.sum().clamp(min=1)


def _batched(fn: Callable[[slice], Tensor], total: int, batch: int) -> Tensor:
    """Concatenate fn over slices of at most ``batch`` items."""
    return torch.cat([fn(slice(i, min(i + batch, total))) for i in range(0, total, batch)])


def member_draws(values: Tensor, observed: Tensor, partition: Partition, sigma: float,
                 generators: list[torch.Generator]) -> tuple[Tensor, Tensor]:
    """Each member's context mask and noisy context values (K, F, H, W) at noise ``sigma``,
    one member per generator: the draws a single-step ensemble denoises."""
    ctx, noisy = [], []
    for g in generators:
        c, _ = partition.sample(observed[None], g)
        ctx.append(c[0])
        noisy.append(add_noise(values[None], torch.full((1,), sigma, device=values.device), g)[0])
    context = torch.stack(ctx)
    return context, torch.stack(noisy) * context


@torch.no_grad()
def single_step(denoiser: Denoiser, values: Tensor, observed: Tensor, domain: Tensor,
                partition: Partition, sigma: float, generators: list[torch.Generator],
                batch: int = 64, positions: Tensor | None = None,
                first_guess: FirstGuess | None = None) -> Tensor:
    """One denoiser pass per member, each with its own context mask and noise.

    values, observed: (F, H, W); domain: (1, H, W); positions (2, H, W) or None; one generator
    per member; ``first_guess`` maps each member's context to its first guess.
    Returns (K, F, H, W) clean estimates.
    """
    ctx_t, noisy_t = member_draws(values, observed, partition, sigma, generators)

    def run(s: slice) -> Tensor:
        guess = None if first_guess is None else first_guess(ctx_t[s])
        return denoise_draws(denoiser, ctx_t[s], noisy_t[s], domain, sigma, positions, guess)

    return _batched(run, len(generators), batch)


def denoise_draws(denoiser: Denoiser, context: Tensor, noisy: Tensor, domain: Tensor,
                  sigma: float, positions: Tensor | None = None,
                  first_guess: Tensor | None = None) -> Tensor:
    """The denoiser's clean estimates (K, F, H, W) of members drawn by :func:`member_draws`,
    all at noise ``sigma``, in one domain (1, H, W)."""
    k = len(context)
    return denoiser(noisy, torch.full((k,), sigma, device=noisy.device), context,
                    domain[None].expand(k, -1, -1, -1), positions, first_guess)


def omega(progress: Tensor | float) -> float:
    """Weight of E[u0|u_σ] against μ0, rising linearly from 0 (pure noise) to 1 (clean)."""
    return float(progress)


@torch.no_grad()
def multi_step(denoiser: Denoiser, values: Tensor, observed: Tensor, domain: Tensor,
               prior_mean: Tensor, partition: Partition, schedule: NoiseSchedule, steps: int,
               generators: list[torch.Generator], batch: int = 64, positions: Tensor | None = None,
               first_guess: FirstGuess | None = None) -> Tensor:
    """Posterior samples by the blended RePaint-style sampler.

    values, observed, prior_mean: (F, H, W); domain (1, H, W). Returns (K, F, H, W).
    Context masks for E[u0|u_σ] are the observation mask rolled by a random shift, so they
    keep the density and structure the denoiser was trained on. A first guess is computed
    once, from every observation of the window.
    """
    k = len(generators)
    dev = values.device
    sigmas = schedule.grid(steps, dev)
    eps = torch.stack([torch.randn(values.shape, generator=g, device=g.device).to(dev)
                       for g in generators])
    obs = observed[None].expand(k, -1, -1, -1)
    x = torch.where(obs, values[None] + sigmas[0] * eps, sigmas[0] * eps)
    dom = domain[None].expand(k, -1, -1, -1)
    inside = domain.bool()
    h, w = values.shape[-2:]
    guess = None if first_guess is None else first_guess(observed[None]).expand(k, -1, -1, -1)
    for i in range(steps):
        sigma = sigmas[i]
        ctx = []
        for g in generators:
            dy = int(torch.randint(0, h, (1,), generator=g, device=g.device))
            dx = int(torch.randint(0, w, (1,), generator=g, device=g.device))
            rolled = torch.roll(observed, shifts=(dy, dx), dims=(-2, -1)) & inside
            ctx.append(partition.sample(rolled[None], g)[0][0])
        ctx_t = torch.stack(ctx)
        pred = _batched(lambda s, x=x, c=ctx_t, n=sigma.expand(k): denoiser(
            x[s] * c[s], n[s], c[s], dom[s], positions, None if guess is None else guess[s]),
            k, batch)
        w_t = omega(i / max(steps - 1, 1))
        x0 = w_t * pred + (1 - w_t) * prior_mean[None]
        x0 = torch.where(obs, values[None], x0)
        sigma_next = sigmas[i + 1] if i + 1 < steps else torch.zeros((), device=dev)
        x = x0 + (sigma_next / sigma) * (x - x0)
    return torch.where(obs, values[None], x)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

