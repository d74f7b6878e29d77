"""Partitions: context and query inside the observation, positivity, structure, auto choice."""

import numpy as np
import pytest
import torch

from ctxq_cli.mask_structure import mask_structure
from ctxq_cli.partition import (
    BlockPartition,
    IntersectionPartition,
    PixelPartition,
    build_partition,
    choose_partition,
    query_probability,
)


def _observed(shape=(4, 3, 16, 16), p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p


def _pool(seed=1):
    return _observed((32, 3, 16, 16), p=0.6, seed=seed)


PARTITIONS = [
    PixelPartition(ratio=0.7),
    PixelPartition(ratio=0.5, overlap=0.3),
    BlockPartition(size=4, ratio=0.6),
    IntersectionPartition(pool=_pool()),
]


@pytest.mark.parametrize("partition", PARTITIONS, ids=lambda p: p.name)
def test_context_and_query_are_inside_the_observation(partition):
    observed = _observed()
    context, query = partition.sample(observed, torch.Generator().manual_seed(3))
    assert context.dtype == torch.bool and context.shape == observed.shape
    assert not (context & ~observed).any()
    assert not (query & ~observed).any()
    assert ((context | query) == observed).all()  # every observed cell plays a role


@pytest.mark.parametrize("partition", PARTITIONS, ids=lambda p: p.name)
def test_every_observed_cell_is_queried_with_positive_probability(partition):
    observed = _observed()
    prob = query_probability(partition, observed, 200, torch.Generator().manual_seed(4))
    assert (prob[observed] > 0).all()
    assert (prob[~observed] == 0).all()


def test_pixel_ratio_is_respected():
    observed = torch.ones(8, 4, 32, 32, dtype=torch.bool)
    context, query = PixelPartition(ratio=0.7).sample(observed, torch.Generator().manual_seed(0))
    assert abs(context.float().mean() - 0.7) < 0.02
    assert not (context & query).any()


def test_overlap_queries_some_context_cells():
    observed = torch.ones(8, 4, 32, 32, dtype=torch.bool)
    context, query = PixelPartition(ratio=0.7, overlap=0.5).sample(
        observed, torch.Generator().manual_seed(0))
    assert abs((context & query).float().sum() / context.float().sum() - 0.5) < 0.03


def test_blocks_are_whole_squares():
    observed = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    context, query = BlockPartition(size=8, ratio=0.5).sample(
        observed, torch.Generator().manual_seed(1))
    assert query.any() and context.any()

    def constant_blocks(img, oy, ox):
        padded = torch.nn.functional.pad(img.float(), (8 - ox, ox, 8 - oy, oy), value=-1)
        tiles = padded.unfold(0, 8, 8).unfold(1, 8, 8).reshape(-1, 64)
        return all(len(set(t[t >= 0].tolist())) <= 1 for t in tiles)

    # Some grid offset makes every 8×8 tile all-context or all-query.
    assert any(constant_blocks(context[0, 0], oy, ox) for oy in range(8) for ox in range(8))


def test_empirical_context_is_an_intersection():
    pool = _pool()
    observed = _observed(p=0.7)
    context, _ = IntersectionPartition(pool=pool).sample(observed, torch.Generator().manual_seed(2))
    # Each sample's context equals observed ∧ one pool mask.
    for b in range(len(observed)):
        assert any(((observed[b] & pool[n]) == context[b]).all() for n in range(len(pool)))


def test_build_partition_round_trip():
    for p in PARTITIONS:
        rebuilt = build_partition(p.config(), getattr(p, "pool", None))
        assert rebuilt.config() == p.config()


def test_mask_structure_and_auto_choice():
    rng = np.random.default_rng(0)
    domain = np.ones((32, 32), bool)
    iid = rng.random((20, 32, 32)) < 0.3
    s = mask_structure(iid, domain)
    assert abs(s.missing_fraction - 0.7) < 0.02 and abs(s.neighbour_correlation) < 0.05
    part, _ = choose_partition(s, 0.7, 0.0)
    assert part.name == "pixel"

    clouds = np.ones((20, 32, 32), bool)
    for t in range(20):  # moving square gaps: clustered and time-varying
        y, x = rng.integers(0, 20, 2)
        clouds[t, y:y + 12, x:x + 12] = False
    s = mask_structure(clouds, domain)
    assert s.neighbour_correlation > 0.5 and s.temporal_change > 0.02
    assert 8 <= s.cluster_size <= 12
    part, why = choose_partition(s, 0.7, 0.0)
    assert part.name == "block" and part.size == round(s.cluster_size) and "clustered" in why


def test_a_new_partition_is_one_class_and_one_registry_entry(tmp_path, monkeypatch):
    """A toy partition, defined here alone, is trained with, saved, loaded and imputed with."""
    from dataclasses import asdict, dataclass

    from typer.testing import CliRunner

    from ctxq_cli import partition as registry
    from ctxq_cli.cli import app
    from ctxq_cli.model import DenoiserModel

    from conftest import smooth_field, write_nc

    @dataclass
    class RowPartition:
        """Drop whole rows from the context with probability 1 − ratio."""

        ratio: float = 0.6
        overlap: float = 0.0
        name: str = "rows"

        @classmethod
        def for_training(cls, inputs):
            return cls(ratio=inputs.ratio, overlap=inputs.overlap)

        @classmethod
        def from_config(cls, config, masks=None):
            return cls(**config)

        def sample(self, observed, generator):
            b, f, h, w = observed.shape
            keep = torch.rand((b, f, h, 1), generator=generator) < self.ratio
            return registry.with_query(observed, keep.expand(b, f, h, w), self.overlap,
                                       generator)

        def config(self):
            return asdict(self)

        def masks(self):
            return None

    monkeypatch.setitem(registry.PARTITIONS, "rows", RowPartition)
    values = smooth_field(8, 12, 12, seed=1)
    observed = np.random.default_rng(1).random(values.shape) < 0.6
    obs = write_nc(tmp_path / "obs.nc", values, observed=observed)
    den, out = tmp_path / "d.safetensors", tmp_path / "out.nc"
    run = CliRunner().invoke
    result = run(app, ["train-denoiser", str(obs), "-o", str(den), "--partition", "rows",
                       "--channels", "8,16", "--steps", "3", "--batch-size", "2",
                       "--window", "2"])
    assert result.exit_code == 0 and "partition: rows" in result.output, result.output
    model = DenoiserModel.load(den)
    assert isinstance(model.partition, RowPartition) and model.partition.ratio == 0.8
    result = run(app, ["impute", str(obs), "--checkpoint", str(den), "-o", str(out),
                       "--ensemble", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    context_rows = query_probability(model.partition, _observed((2, 1, 12, 12), p=1.0), 200,
                                     torch.Generator().manual_seed(0))
    assert (context_rows > 0).all()                       # every cell can be a query
    result = run(app, ["train-denoiser", str(obs), "-o", str(den), "--overwrite",
                       "--partition", "columns"])
    assert result.exit_code == 1 and "--partition must be one of auto, pixel" in result.output
