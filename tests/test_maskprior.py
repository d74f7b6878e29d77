"""Mask prior: loss, probability-flow sampler, guidance, statistics and the prior partition."""

import json
import math

import numpy as np
import pytest
import torch

from ctxq_cli.mask_structure import mask_statistics
from ctxq_cli.maskprior import (
    Guidance,
    MaskPrior,
    MaskPriorConfig,
    _integrate,
    alpha_sigma,
    draw_pool,
    intersection_context,
    mask_prior_loss,
    sample_masks,
)
from ctxq_cli.partition import IntersectionPartition, build_partition, query_probability


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and waiting threads stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(frames=2, seed=0, **kw):
    torch.manual_seed(seed)
    return MaskPrior(MaskPriorConfig(frames=frames, channels=(8, 16), embedding=16, **kw))


def _masks(shape=(4, 2, 8, 8), p=0.6, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


class _Posterior(torch.nn.Module):
    """A stand-in network that returns exact class logits: a fixed target or i.i.d. cells."""

    def __init__(self, config, target=None, p=None):
        super().__init__()
        self.config, self.target, self.p = config, target, p
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t, domain):
        if self.target is not None:     # certain of the target class everywhere
            logit = 20.0 * (2 * self.target.float() - 1).expand(x.shape[0], -1, -1, -1)
        else:                           # exact posterior of independent Bernoulli(p) cells
            a, s = (v.view(-1, 1, 1, 1) for v in alpha_sigma(t))
            logit = (math.log(self.p / (1 - self.p))
                     + self.config.scale * a * (x[:, :, 1] - x[:, :, 0]) / s.clamp(min=1e-6) ** 2)
        return torch.stack([torch.zeros_like(logit), logit], dim=2)


def test_config_round_trips_through_json():
    cfg = MaskPriorConfig(frames=3, scale=2.0, channels=(8, 16), patch=2)
    assert MaskPriorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.multiple == 4 and cfg.unet().in_channels == 7 and cfg.unet().out_channels == 6


def test_loss_is_finite_differentiable_and_blind_outside_the_domain():
    model = _model()
    masks = _masks()
    domain = torch.zeros(8, 8, dtype=torch.bool)
    domain[1:7, 2:8] = True
    loss = mask_prior_loss(model, masks, domain, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    changed = masks ^ ~domain          # flip every cell outside the domain
    again = mask_prior_loss(model, changed, domain[None, None].expand(4, 1, 8, 8),
                            torch.Generator().manual_seed(1))
    assert again.item() == loss.item()


def test_loss_pads_grids_that_are_not_multiples():
    model = _model(patch=2)               # multiple 4
    loss = mask_prior_loss(model, _masks((2, 2, 6, 10)), None, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_samples_are_boolean_inside_the_domain_and_reproducible():
    model = _model()
    domain = torch.ones(12, 8, dtype=torch.bool)
    domain[:3] = False
    draw = lambda seed, batch=64: sample_masks(model, 5, domain, 4,           # noqa: E731
                                               torch.Generator().manual_seed(seed),
                                               batch_size=batch)
    a = draw(0)
    assert a.dtype == torch.bool and a.shape == (5, 2, 12, 8)
    assert not a[:, :, :3].any()
    assert torch.equal(a, draw(0))
    assert torch.equal(a, draw(0, batch=2))      # whatever the batch size
    assert not torch.equal(a, draw(1))
    b = sample_masks(model, 3, (8, 8), 2, torch.Generator().manual_seed(0))
    assert b.shape == (3, 2, 8, 8)


def test_ode_lands_on_the_vertex_a_certain_network_predicts():
    target = _masks((1, 2, 8, 8), seed=3)
    cfg = MaskPriorConfig(frames=2, scale=3.0)
    oracle = _Posterior(cfg, target=target)
    x1 = torch.randn(4, 2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    x0 = _integrate(oracle, x1, torch.ones(4, 1, 8, 8, dtype=torch.bool), 7)
    one_hot = torch.stack([~target, target], dim=2).float().expand_as(x0)
    torch.testing.assert_close(x0, 3.0 * one_hot, atol=1e-4, rtol=0)
    masks = sample_masks(oracle, 4, (8, 8), 7, torch.Generator().manual_seed(0))
    assert torch.equal(masks, target.expand(4, -1, -1, -1))


def test_ode_with_the_exact_score_samples_the_right_density():
    # Independent cells observed with p = 0.3: the ODE driven by the exact posterior through
    # the Tweedie score must reproduce p.
    oracle = _Posterior(MaskPriorConfig(frames=1, scale=1.0), p=0.3)
    masks = sample_masks(oracle, 64, (16, 16), 20, torch.Generator().manual_seed(0))
    assert abs(masks.float().mean().item() - 0.3) < 0.02


def test_guidance_aligns_samples_with_the_observation():
    observed = _masks((6, 2, 8, 8), p=0.5, seed=5)
    prior = _Posterior(MaskPriorConfig(frames=2, scale=1.0), p=0.5)
    g = lambda: torch.Generator().manual_seed(2)                          # noqa: E731
    free = sample_masks(prior, 6, (8, 8), 5, g())
    full = sample_masks(prior, 6, (8, 8), 5, g(), Guidance(observed, rho=1.0, weight=50.0))
    assert (free == observed).float().mean() < 0.6
    assert (full == observed).float().mean() > 0.95
    # A partial anchor keeps part of the observation and leaves room for other draws.
    half = sample_masks(prior, 6, (8, 8), 5, g(), Guidance(observed, rho=0.5, weight=50.0))
    _, _, ratio = intersection_context(half, observed)
    assert 0.3 < ratio.mean() < 0.7 and not (half & ~observed).any()


def test_guidance_back_propagates_through_the_network():
    model = _model()
    observed = _masks((3, 2, 8, 8), p=0.5, seed=5)
    free = sample_masks(model, 3, (8, 8), 3, torch.Generator().manual_seed(2))
    guided = sample_masks(model, 3, (8, 8), 3, torch.Generator().manual_seed(2),
                          Guidance(observed, rho=1.0, weight=1e4))
    assert guided.shape == free.shape and not torch.equal(guided, free)
    assert all(p.grad is None for p in model.parameters())


def test_default_guidance_weight_scales_with_the_domain():
    domain = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    domain[0, :, :4] = True
    domain[1] = True
    w = Guidance(torch.zeros(1, 3, 8, 8, dtype=torch.bool)).weights(domain, 3)
    torch.testing.assert_close(w, torch.tensor([0.03 * 3 * 32, 0.03 * 3 * 64]))


def test_statistics_of_known_masks():
    yy, xx = np.mgrid[:8, :8]
    checker = ((yy + xx) % 2 == 0)[None, None]
    s = mask_statistics(checker)
    assert s["autocorrelation"] == pytest.approx(-1.0)
    assert s["observed_fraction"] == pytest.approx(0.5)
    assert s["missing_cluster_size"] == 1.0 and s["observed_cluster_size"] == 1.0

    half = np.zeros((1, 1, 8, 8), dtype=bool)
    half[..., :4] = True
    s = mask_statistics(torch.from_numpy(half))
    assert s["observed_fraction"] == 0.5
    assert s["fraction_histogram"][5] == 1.0 and sum(s["fraction_histogram"]) == 1.0
    assert s["autocorrelation_y"] == pytest.approx(1.0)
    assert s["missing_cluster_size"] == 32.0 and s["observed_cluster_size"] == 32.0

    holes = np.ones((2, 8, 8), dtype=bool)
    holes[0, 1:3, 1:3] = False        # a 2×2 hole
    holes[0, 5, 4:7] = False          # a 1×3 bar
    holes[1, 0, 0] = holes[1, 1, 1] = False   # diagonal neighbours: two clusters
    s = mask_statistics(holes)
    assert s["missing_cluster_size"] == pytest.approx(9 / 4)
    assert s["observed_cluster_size"] == pytest.approx((57 + 62) / 2)


def test_statistics_ignore_cells_outside_the_domain():
    masks = np.zeros((1, 1, 4, 4), dtype=bool)
    masks[..., :2] = True
    domain = np.zeros((4, 4), dtype=bool)
    domain[:, 1:3] = True
    s = mask_statistics(masks, domain)
    assert s["observed_fraction"] == 0.5
    assert s["missing_cluster_size"] == 4.0 and s["observed_cluster_size"] == 4.0


def test_intersection_context():
    prior = torch.tensor([[[[1, 1, 0, 0]]]], dtype=torch.bool)
    observed = torch.tensor([[[[1, 0, 1, 1]]]], dtype=torch.bool)
    context, query, ratio = intersection_context(prior, observed)
    assert context.tolist() == [[[[True, False, False, False]]]]
    assert query.tolist() == [[[[False, False, True, True]]]]
    torch.testing.assert_close(ratio, torch.tensor([1 / 3]))


PARTITIONS = [
    IntersectionPartition(pool=_masks((32, 3, 16, 16), p=0.6, seed=1), name="prior"),
    IntersectionPartition(pool=_masks((32, 3, 24, 20), p=0.6, seed=1), overlap=0.3,
                          name="prior"),                                           # cropped
    IntersectionPartition(pool=_masks((32, 1, 16, 16), p=0.6, seed=1), name="prior"),  # frames
]


@pytest.mark.parametrize("partition", PARTITIONS, ids=["pool", "crop", "frames"])
def test_partition_splits_inside_the_observation_with_positivity(partition):
    observed = _masks((4, 3, 16, 16), p=0.5)
    context, query = partition.sample(observed, torch.Generator().manual_seed(3))
    assert context.dtype == torch.bool and context.shape == observed.shape
    assert not (context & ~observed).any() and not (query & ~observed).any()
    assert ((context | query) == observed).all()
    if partition.overlap == 0:
        assert not (context & query).any()
    prob = query_probability(partition, observed, 100, torch.Generator().manual_seed(4))
    assert (prob[observed] > 0).all() and (prob[~observed] == 0).all()


def test_pool_from_the_prior_rebuilds_as_a_prior_partition():
    model = _model(frames=3)
    pool = draw_pool(model, 6, (8, 8), 3, torch.Generator().manual_seed(0), batch_size=4)
    assert pool.shape == (6, 3, 8, 8) and pool.dtype == torch.bool
    part = build_partition({"name": "prior", "overlap": 0.0}, pool)
    observed = _masks((2, 3, 8, 8), p=0.7)
    context, query = part.sample(observed, torch.Generator().manual_seed(1))
    assert part.name == "prior" and ((context | query) == observed).all()


def test_short_training_reduces_the_loss():
    torch.manual_seed(0)
    model = MaskPrior(MaskPriorConfig(frames=1, channels=(8, 16), embedding=16))
    masks = torch.zeros(16, 1, 8, 8, dtype=torch.bool)
    masks[..., :4] = True                       # every mask: the left half observed

    def evaluate():
        with torch.no_grad():
            return mask_prior_loss(model, masks, None, torch.Generator().manual_seed(9)).item()

    before = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        loss = mask_prior_loss(model, masks, None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert after < 0.5 * before, (before, after)
