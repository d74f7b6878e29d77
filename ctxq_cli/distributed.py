"""Data-parallel training over processes started by ``torchrun`` (PyTorch's own engine).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; a process
started without them trains alone. With several processes every rank draws its own shard of
the training windows (a contiguous stretch of them, :func:`shard`) and its own context
masks; :class:`torch.nn.parallel.DistributedDataParallel` averages the gradients, so all ranks
hold the same weights after every step. ``--batch-size`` is the global batch, split across the
ranks, so one configuration means the same run on any number of processes. Only rank 0 writes
checkpoints, resumable states and logs. NCCL carries the gradients between GPUs, gloo between
CPU processes.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist

from ctxq_cli.errors import CtxqError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when several processes train together."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on the process that writes files and reports."""
        return self.rank == 0


def launched() -> bool:
    """True when started by torchrun (or srun) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group torchrun set up; return it and this rank's device.

    On CUDA each process takes the GPU of its local rank and talks over NCCL; on CPU, gloo.
    """
    if not launched():
        return Group(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise CtxqError(f"local rank {local} has no GPU ({torch.cuda.device_count()} "
                            "visible); start at most one process per GPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    group = Group(rank=rank, world=world, local_rank=local)
    log.info("process %d of %d on %s (%s)", rank, world, device, backend)
    return group, device


def finish(group: Group, completed: bool = True) -> None:
    """Leave the process group; after a completed run, once every rank has got there.

    The barrier keeps a fast rank from tearing down its connections while a slow one (rank 0
    writing the checkpoint) still holds them, which gloo can answer with an abort. After an
    error it is skipped: the other ranks may never arrive.
    """
    if group.active and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def reduce_sum(group: Group, values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the ranks (itself when alone)."""
    if group.active:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather(group: Group, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when alone)."""
    if not group.active:
        return [obj]
    out: list[Any] = [None] * group.world
    dist.all_gather_object(out, obj)
    return out


def split_batch(batch_size: int, group: Group) -> int:
    """Samples per process for a global batch; the global batch must split evenly."""
    if batch_size % group.world:
        raise CtxqError(f"--batch-size {batch_size} does not split evenly over "
                        f"{group.world} processes; use a multiple of {group.world}")
    return batch_size // group.world


def shard(count: int, group: Group) -> range:
    """This process's share of ``count`` training windows: a contiguous run of them, so that
    it reads (and the temporal smoother keeps states for) only its own stretch of the record."""
    return range(count * group.rank // group.world, count * (group.rank + 1) // group.world)


class WindowSampler:
    """This process's shard of the training windows (:func:`shard`), shuffled anew every
    epoch, batch after batch.

    The order of an epoch is a permutation drawn from ``seed + epoch`` (with one process, the
    order of a shuffling ``DistributedSampler``; the other ranks add their own offset, so that
    their shuffles differ); a batch that runs past an epoch's end continues into the next. How
    many windows have been drawn is part of a resumable state: every rank draws the same number
    per step, so one count puts each rank back where it was, whatever its shard's length.
    """

    RANK_SEED = 1_000_003    # seed offset between ranks

    def __init__(self, count: int, batch: int, seed: int, group: Group = Group()) -> None:
        self.count, self.batch, self.seed, self.group = count, batch, seed, group
        self.windows = shard(count, group)
        if not len(self.windows):
            raise CtxqError(f"{count} training windows cannot be shared by {group.world} "
                            f"processes; use at most {count} processes or a longer record")
        self.drawn = 0
        self._order: tuple[int, list[int]] | None = None   # (epoch, its order)

    def _epoch_order(self, epoch: int) -> list[int]:
        """Window indices of ``epoch`` for this rank."""
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch + self.RANK_SEED * self.group.rank)
            order = torch.randperm(len(self.windows), generator=g) + self.windows.start
            self._order = (epoch, order.tolist())
        return self._order[1]

    def next(self) -> torch.Tensor:
        """The next ``batch`` window indices in [0, count), int64."""
        out = self.peek()
        self.drawn += self.batch
        return out

    def peek(self) -> torch.Tensor:
        """The indices :meth:`next` will give, without moving on."""
        out: list[int] = []
        drawn = self.drawn
        while len(out) < self.batch:
            epoch, position = divmod(drawn, len(self.windows))
            take = self._epoch_order(epoch)[position:position + self.batch - len(out)]
            out += take
            drawn += len(take)
        return torch.tensor(out, dtype=torch.int64)

    def state_dict(self) -> dict[str, int]:
        """Where the sampler stands: the windows drawn so far (the same on every rank)."""
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Go back to a saved position (a state of one process that counted epoch and
        position is read too)."""
        if "drawn" in state:
            self.drawn = int(state["drawn"])
        else:
            self.drawn = int(state["epoch"]) * len(self.windows) + int(state["position"])
