"""Context/query partitions of an observation mask.

Each partition splits the observed cells ``M`` of a batch into a context ``M_ctx ⊆ M`` (what
the denoiser sees) and a query ``M_qry ⊆ M`` (where the loss lives)::

    M_qry = M ∧ (¬M_ctx ∨ B),   B ~ Bernoulli(overlap)

The context is drawn with the same structure as the observation masks (Work I), so every
observed cell is queried with positive probability given the context:

- ``pixel``: each observed cell stays in the context with probability r;
- ``block``: square blocks of side b are dropped from the context with probability 1 − r;
- ``empirical``: ``M_ctx = M ∧ M'`` with ``M'`` another sample's observation mask, the
  intersection rule that gives positivity for any mask topology without a hand-made rule,
  provided the masks vary (a cell observed in every mask is never queried; ``auto`` then picks
  another partition);
- ``prior``: the same intersection with masks drawn from a learned mask prior
  (:mod:`ctxq_cli.maskprior`), which puts mass on every mask and so queries every cell.

The optional overlap ``B`` also queries some context cells, so the denoiser learns to denoise
what it sees (used by the multi-step sampler) besides filling what it does not.

Masks are boolean tensors of shape (B, F, H, W), F = frames × variables of a window.

A new partition is one class with ``name``, ``sample``, ``config``, ``masks`` and the class
methods ``for_training`` and ``from_config``, registered with :func:`register`: training
(``--partition NAME``), option validation, saving and loading all read :data:`PARTITIONS`.

References:
    Incomplete Data, Complete Dynamics: A Diffusion Approach (ICLR 2026), section 3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ctxq_cli.mask_structure import MaskStructure

log = logging.getLogger(__name__)


class Partition(Protocol):
    """Splits observed cells into (context, query)."""

    name: str

    def sample(self, observed: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Return boolean (context, query) masks of the shape of ``observed``."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-able parameters, enough to rebuild the partition with its masks."""
        ...

    def masks(self) -> Tensor | None:
        """Boolean masks the partition draws from, saved with it (bit-packed), or None."""
        ...


@dataclass(frozen=True)
class PartitionInputs:
    """What a partition may be built from when training starts."""

    ratio: float                                # share of observed cells kept in the context
    overlap: float                              # share of context cells also queried
    structure: MaskStructure                    # of the training masks
    block_size: int | None = None               # asked for; None: from the structure
    data_masks: Callable[[], Tensor] | None = None   # a pool of the data's window masks
    prior_masks: Callable[[], Tensor] | None = None  # a pool drawn from a mask prior


PARTITIONS: dict[str, Any] = {}     # name → partition class


def register(cls: Any) -> Any:
    """Make a partition class available by its ``name`` (a class decorator)."""
    PARTITIONS[cls.name] = cls
    return cls


def uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """U(0, 1) draws from an explicit generator (on the generator's device, then moved)."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def with_query(observed: Tensor, context: Tensor, overlap: float,
               generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Complete a context into (context, query): the unseen observed cells plus an overlap."""
    context = context & observed
    query = observed & ~context
    if overlap > 0:
        query = query | (context & (uniform(observed.shape, generator, observed.device) < overlap))
    return context, query


@register
@dataclass
class PixelPartition:
    """Keep each observed cell in the context with probability ``ratio``."""

    ratio: float = 0.7
    overlap: float = 0.0
    name: str = "pixel"

    @classmethod
    def for_training(cls, inputs: PartitionInputs) -> PixelPartition:
        """The partition for a training run."""
        return cls(ratio=inputs.ratio, overlap=inputs.overlap)

    @classmethod
    def from_config(cls, config: dict[str, Any], masks: Tensor | None = None) -> PixelPartition:
        """Rebuild from :meth:`config`."""
        return cls(**config)

    def sample(self, observed: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw (context, query)."""
        keep = uniform(observed.shape, generator, observed.device) < self.ratio
        return with_query(observed, keep, self.overlap, generator)

    def config(self) -> dict[str, Any]:
        """Parameters for the checkpoint."""
        return asdict(self)

    def masks(self) -> None:
        """No masks to save."""
        return None


@register
@dataclass
class BlockPartition:
    """Drop square blocks of side ``size`` from the context with probability 1 − ``ratio``."""

    size: int = 8
    ratio: float = 0.7
    overlap: float = 0.0
    name: str = "block"

    @classmethod
    def for_training(cls, inputs: PartitionInputs) -> BlockPartition:
        """Blocks of the size asked for, else sized like the gaps."""
        return cls(size=inputs.block_size or inputs.structure.block_size, ratio=inputs.ratio,
                   overlap=inputs.overlap)

    @classmethod
    def from_config(cls, config: dict[str, Any], masks: Tensor | None = None) -> BlockPartition:
        """Rebuild from :meth:`config`."""
        return cls(**config)

    def masks(self) -> None:
        """No masks to save."""
        return None

    def sample(self, observed: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw (context, query); the block grid has a random offset per draw."""
        b, f, h, w = observed.shape
        s = max(1, self.size)
        nh, nw = -(-h // s) + 1, -(-w // s) + 1
        keep = uniform((b, f, nh, nw), generator, observed.device) < self.ratio
        # Upsample the block grid by indexing at a random offset: no round trip to the host.
        offset = torch.randint(0, s, (2,), generator=generator,
                               device=generator.device).to(observed.device)
        rows = (torch.arange(h, device=observed.device) + offset[0]) // s
        cols = (torch.arange(w, device=observed.device) + offset[1]) // s
        keep = keep.index_select(2, rows).index_select(3, cols)
        return with_query(observed, keep, self.overlap, generator)

    def config(self) -> dict[str, Any]:
        """Parameters for the checkpoint."""
        return asdict(self)


@register
@dataclass
class IntersectionPartition:
    """Context = M ∧ M' with M' from a pool: the data's own masks or draws from a mask prior."""

    pool: Tensor | None = None     # (N, F, H, W) bool
    overlap: float = 0.0
    name: str = "empirical"
    _copies: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False,
                                       compare=False)

    @classmethod
    def for_training(cls, inputs: PartitionInputs) -> IntersectionPartition:
        """A pool of the training data's own window masks."""
        if inputs.data_masks is None:
            raise ValueError("the empirical partition needs the data's masks")
        return cls(pool=inputs.data_masks(), overlap=inputs.overlap)

    @classmethod
    def from_config(cls, config: dict[str, Any],
                    masks: Tensor | None = None) -> IntersectionPartition:
        """Rebuild from :meth:`config` and the saved pool."""
        return cls(pool=masks, **{k: v for k, v in config.items() if k != "name"})

    def masks(self) -> Tensor | None:
        """The pool."""
        return self.pool

    def sample(self, observed: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw (context, query) with a random pool mask, randomly placed if larger."""
        if self.pool is None or len(self.pool) == 0:
            raise ValueError(f"{self.name} partition needs a pool of masks")
        b, f, h, w = observed.shape
        n, pf, ph, pw = self.pool.shape
        pool = self._on(observed.device)
        dev = observed.device
        if pf == f:
            idx = torch.randint(0, n, (b,), generator=generator, device=generator.device)
            other = pool[idx.to(dev)]
        else:  # a pool of other window lengths serves the batch frame by frame
            idx = torch.randint(0, n * pf, (b * f,), generator=generator,
                                device=generator.device)
            other = pool.reshape(n * pf, ph, pw)[idx.to(dev)].reshape(b, f, ph, pw)
        if (ph, pw) != (h, w):
            other = random_crop(other, h, w, generator)
        return with_query(observed, other, self.overlap, generator)

    def _on(self, device: torch.device) -> Tensor:
        """The pool on ``device``, copied there once."""
        assert self.pool is not None
        if self.pool.device != device:
            cached = self._copies.get(str(device))
            if cached is None:
                cached = self._copies[str(device)] = self.pool.to(device)
            return cached
        return self.pool

    def config(self) -> dict[str, Any]:
        """Parameters for the checkpoint (the pool is stored as a tensor beside them)."""
        return {"name": self.name, "overlap": self.overlap}


@register
@dataclass
class PriorPartition(IntersectionPartition):
    """The intersection with masks drawn from a learned mask prior (queries every cell)."""

    name: str = "prior"

    @classmethod
    def for_training(cls, inputs: PartitionInputs) -> PriorPartition:
        """A pool drawn from the mask prior."""
        if inputs.prior_masks is None:
            raise ValueError("the prior partition needs a mask prior")
        return cls(pool=inputs.prior_masks(), overlap=inputs.overlap)


def random_crop(masks: Tensor, h: int, w: int, generator: torch.Generator) -> Tensor:
    """Crop (N, F, H', W') masks to (N, F, h, w) at one random offset, padding if smaller."""
    n, f, ph, pw = masks.shape
    if ph < h or pw < w:
        masks = torch.nn.functional.pad(masks, (0, max(0, w - pw), 0, max(0, h - ph)))
        ph, pw = masks.shape[-2:]
    dev = masks.device
    oy = torch.randint(0, ph - h + 1, (1,), generator=generator, device=generator.device)
    ox = torch.randint(0, pw - w + 1, (1,), generator=generator, device=generator.device)
    rows = oy.to(dev) + torch.arange(h, device=dev)
    cols = ox.to(dev) + torch.arange(w, device=dev)
    return masks.index_select(2, rows).index_select(3, cols)


def build_partition(config: dict[str, Any], masks: Tensor | None = None) -> Partition:
    """Rebuild a partition from its config (and its saved masks, if it has any)."""
    kind = PARTITIONS.get(config["name"])
    if kind is None:
        raise ValueError(f"unknown partition '{config['name']}' (known: "
                         f"{', '.join(PARTITIONS)})")
    return kind.from_config({k: v for k, v in config.items() if k != "name"}, masks)


# ----------------------------------------------------------------------------- diagnostics


def choose_partition(structure: MaskStructure, ratio: float,
                     overlap: float) -> tuple[Partition, str]:
    """Pick a partition from the masks' structure; return it with the reason.

    Scattered gaps get ``pixel``; clustered gaps get ``block`` with the blocks sized like the
    gaps. On Kolmogorov flow with 3×3 blocks and with clouds, ``block`` was at least as good as
    ``empirical`` (examples/bench_partitions.py), whose sparser contexts also fail on sparse masks.
    """
    if structure.scattered:
        return (PixelPartition(ratio=ratio, overlap=overlap),
                f"missing cells are nearly independent ({structure.describe()})")
    size = structure.block_size
    return (BlockPartition(size=size, ratio=ratio, overlap=overlap),
            f"gaps are spatially clustered, blocks of {size} cells ({structure.describe()})")


def query_probability(partition: Partition, observed: Tensor, draws: int,
                      generator: torch.Generator) -> Tensor:
    """Frequency with which each cell is a query outside the context, over ``draws`` draws.

    Positivity holds for the batch when this is > 0 on every observed cell.
    """
    hits = torch.zeros(observed.shape, dtype=torch.float32, device=observed.device)
    for _ in range(draws):
        context, query = partition.sample(observed, generator)
        hits += (query & ~context).float()
    return hits / draws
