"""Denoiser preconditioning, the query-only loss and the samplers."""

import torch

from ctxq_cli.diffusion import Denoiser, NoiseSchedule, context_query_loss, multi_step, single_step
from ctxq_cli.partition import PixelPartition
from ctxq_cli.unet import UNetConfig


def _denoiser(fields=3):
    torch.manual_seed(0)
    return Denoiser(UNetConfig(Denoiser.input_channels(fields), fields, channels=(8, 16)))


def _batch(b=2, f=3, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, f, n, n, generator=g)
    observed = torch.rand(b, f, n, n, generator=g) < 0.6
    domain = torch.ones(b, 1, n, n, dtype=torch.bool)
    return values * observed, observed, domain


def test_output_shape_and_context_skip_at_small_noise():
    den = _denoiser()
    values, observed, domain = _batch()
    sigma = torch.full((2,), 1e-4)
    out = den(values * observed, sigma, observed, domain)
    assert out.shape == values.shape
    # At vanishing noise a context cell passes through (c_skip → 1, c_out → 0).
    torch.testing.assert_close(out[observed], values[observed], atol=1e-3, rtol=0)


class _Recorder(torch.nn.Module):
    """A fake denoiser that returns a learnable field, to see where the loss looks."""

    def __init__(self, shape):
        super().__init__()
        self.field = torch.nn.Parameter(torch.zeros(shape))

    def forward(self, noisy, sigma, context, domain, cells=None, first_guess=None):
        return self.field.expand(noisy.shape[0], -1, -1, -1)


def test_loss_lives_on_query_cells_only():
    values, observed, domain = _batch(b=1)
    rec = _Recorder(values.shape[1:])
    part = PixelPartition(ratio=0.5)
    g = torch.Generator().manual_seed(7)
    loss = context_query_loss(rec, values, observed, domain, part, NoiseSchedule(), g)
    loss.backward()
    context, query = part.sample(observed, torch.Generator().manual_seed(7))
    grad = rec.field.grad
    assert (grad[~observed[0]] == 0).all()          # unobserved cells never give a gradient
    assert (grad[context[0]] == 0).all()            # nor do context cells (overlap 0)
    assert (grad[query[0] & (values[0] != 0)] != 0).all()


def test_schedule_grid_and_training_draws():
    s = NoiseSchedule(sigma_min=0.01, sigma_max=10, low_noise_fraction=0.25)
    grid = s.grid(5, torch.device("cpu"))
    assert torch.isclose(grid[0], torch.tensor(10.0)) and torch.isclose(grid[-1],
                                                                      torch.tensor(0.01))
    assert (grid[1:] < grid[:-1]).all()
    draws = s.sample(4000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert draws.min() >= 0.01 and draws.max() <= 10
    assert abs((draws == 0.01).float().mean() - 0.25) < 0.03


def test_samplers_keep_observations_and_are_reproducible():
    den = _denoiser().eval()
    values, observed, domain = _batch(b=1)
    v, o, d = values[0], observed[0], domain[0]
    part = PixelPartition(ratio=0.7)

    def gens():
        return [torch.Generator().manual_seed(k) for k in range(3)]

    a = single_step(den, v, o, d, part, 0.002, gens(), batch=2)
    b = single_step(den, v, o, d, part, 0.002, gens(), batch=3)
    assert a.shape == (3, *v.shape)
    torch.testing.assert_close(a, b)
    samples = multi_step(den, v, o, d, a.mean(0), part, NoiseSchedule(), 4, gens())
    assert samples.shape == (3, *v.shape)
    assert torch.equal(samples[:, o], v[o].expand(3, -1))
    assert torch.isfinite(samples).all()
    assert not torch.equal(samples[0], samples[1])  # members differ in the gaps


def test_first_guess_outside_the_domain_is_never_seen():
    """Land and padding carry no first guess: poisoning it there changes no output inside."""
    torch.manual_seed(0)
    den = Denoiser(UNetConfig(Denoiser.input_channels(3, first_guess=True), 3, channels=(8, 16)),
                   first_guess=True)
    torch.nn.init.normal_(den.net.head[-1].weight)     # a trained head, not the zero start
    values, observed, domain = _batch()
    domain[:, :, :, 6:] = False                          # two columns of land or padding
    observed &= domain
    guess = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    poisoned = torch.where(domain, guess, 40 * torch.randn_like(guess))
    sigma = torch.full((2,), 0.002)
    clean = den(values * observed, sigma, observed, domain, first_guess=guess * domain)
    out = den(values * observed, sigma, observed, domain, first_guess=poisoned)
    inside = domain.expand_as(out)
    torch.testing.assert_close(out[inside], clean[inside])
    assert not torch.allclose(out[inside], den(values * observed, sigma, observed, domain,
                                               first_guess=guess + 1)[inside])
