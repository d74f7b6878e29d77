"""Which weights a denoiser's training keeps: those that fill withheld observations best.

The cells that ``impute`` withholds to calibrate its spread (:mod:`ctxq_cli.withhold`) are
kept out of training. They lie in frames the network trains on, shaped like the real gaps, so
filling them is the task the user asks for, in the frames where memorising a record shows: a
network that recalls the observed cells of the frames it trained on fills their gaps worse.
Along one training run on A1B air temperature with 10 % of cells observed, the fill error on
these cells ranked every checkpoint as the real gaps did (both best at step 500), while the
denoising loss on held-out frames ranked them almost opposite (best at step 1000, and lower
still after 30 minutes, whose fill was worse).

The score is the fill ``impute`` makes, shortened: each window of the calibration frames is
denoised at the smallest noise under a few context draws (members), the windows of each
member offset as impute offsets them, their mean taken; with a temporal smoother the centre
is the first guess plus the share of the network's correction that fits the withheld cells
best (:func:`ctxq_cli.spread.fit_correction`), as impute's. Its RMSE, in normalised units,
selects the weights. Context draws are the same at every validation, so two checkpoints are
compared on the same draws. Nothing the network sees holds a withheld value: the cells are
missing from the frames, from the smoother's states and from the first guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from ctxq_cli.data import Batch, Holdout, TrainingFrames, Windows, pad_grid
from ctxq_cli.diffusion import Denoiser, denoise_draws, member_draws
from ctxq_cli.impute import member_generator, window_plan
from ctxq_cli.partition import Partition
from ctxq_cli.spread import fit_correction
from ctxq_cli.temporal import first_guess

SELECTION = ("auto", "withheld", "validation")   # what selects a denoiser's weights
MEMBERS = 4   # context draws per window: enough to rank checkpoints, a few seconds each
KEPT_BYTES = 2 ** 28   # the members' inputs kept between scores; beyond, drawn again each time


class WithheldFill:
    """The fill error on the observations kept out of training, for any weights."""

    def __init__(self, windows: Windows, truth: TrainingFrames, holdout: Holdout,
                 partition: Partition, sigma: float, seed: int, members: int = MEMBERS) -> None:
        """``windows``: the record's windows with the withheld cells missing (those starting
        in the calibration frames are read, 16 at a time, at each call); ``truth``: the same
        frames with them."""
        self.partition, self.sigma, self.seed = partition, sigma, seed
        self.window, self.device, self.smoother = windows.window, windows.device, \
            windows.smoother
        self.frames = holdout.frames
        span = self.frames.stop - self.frames.start
        plans = {k: window_plan(span, self.window, k % self.window) for k in range(members)}
        self.starts = sorted({s for plan in plans.values() for s, _, _ in plan})
        # (member, first, stop) of each start: the frames [first, stop) that member takes
        self.takes = {s: [(k, a, b) for k, plan in plans.items() for t, a, b in plan if t == s]
                      for s in self.starts}
        self.reading = windows.subset(np.asarray(self.starts) + self.frames.start)
        values, _ = truth.read(self.frames.start, self.frames.stop)        # (n, C, H, W)
        self.hidden = torch.from_numpy(pad_grid(holdout.hidden, truth.multiple)).to(
            self.device)
        self.targets = torch.from_numpy(values).to(self.device)[self.hidden].double()
        self.drawn: dict[int, tuple] = {}   # each window start's inputs, see _inputs
        self.kept = 0
        self.first = None
        if self.smoother is not None:   # from every observation left: no context to draw
            self.first = self._gather(lambda s, b, j, takes: self._guess(b, j)(
                b.observed[j:j + 1])[:, :b.values.shape[1]], only_first=True)[self.hidden]

    def _guess(self, batch: Batch, j: int):
        """The first guess of window j's members as a function of their context."""
        if self.smoother is None or batch.messages is None:
            return None
        smoother, values, win = self.smoother, batch.values[j:j + 1], self.window
        told = tuple(m[j:j + 1] for m in batch.messages)
        return lambda ctx: first_guess(smoother, values.expand(len(ctx), -1, -1, -1), ctx,
                                       told, win)

    def _inputs(self, s: int, batch: Batch | None, j: int, takes: list[tuple[int, int, int]]
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """What the network sees of the members of the window starting at s: their context
        masks and noisy contexts, the domain and their first guesses. They are the same at
        every score, so they are drawn once and kept while they fit ``KEPT_BYTES``."""
        if s in self.drawn:
            return self.drawn[s]
        gens = [member_generator(self.seed, k, s, 0, 0, self.device) for k, _, _ in takes]
        context, noisy = member_draws(batch.values[j], batch.observed[j], self.partition,
                                      self.sigma, gens)
        guess = self._guess(batch, j)
        inputs = (context, noisy, batch.domain[j].clone(),
                  None if guess is None else guess(context))
        size = sum(t.numel() * t.element_size() for t in inputs if t is not None)
        if self.kept + size <= KEPT_BYTES:
            self.drawn[s], self.kept = inputs, self.kept + size
        return inputs

    def _windows(self) -> Iterator[tuple[int, Batch | None, int]]:
        """(start, batch, index in the batch) of each scored window; the record is read only
        when some window's inputs were not kept."""
        if all(s in self.drawn for s in self.starts):
            yield from ((s, None, -1) for s in self.starts)
            return
        starts = iter(self.starts)
        for batch in self.reading.sequential(stride=1):
            for j in range(len(batch.values)):
                yield next(starts), batch, j

    def _gather(self, estimate, only_first: bool = False) -> Tensor:
        """Frames (n, C, H, W): the mean over members of the frames each takes from its
        windows; ``estimate(start, batch, j, takes)`` gives window j's (len(takes), F, H, W).
        ``only_first``: member 0 only (it takes every frame once)."""
        n, c = self.frames.stop - self.frames.start, self.hidden.shape[1]
        total = count = None
        for s, batch, j in self._windows():
            takes = [t for t in self.takes[s] if t[0] == 0] if only_first else self.takes[s]
            if not takes:
                continue
            out = estimate(s, batch, j, takes)
            h, w = out.shape[-2:]
            out = out.reshape(len(takes), self.window, c, h, w)
            if total is None:
                total = torch.zeros((n, c, h, w), device=self.device)
                count = torch.zeros((n, 1, 1, 1), device=self.device)
            for i, (_, a, b) in enumerate(takes):
                total[s + a:s + b] += out[i, a:b]
                count[s + a:s + b] += 1
        return total / count.clamp(min=1)

    @torch.no_grad()
    def network(self, denoiser: Denoiser) -> Tensor:
        """The members' mean at the withheld cells (1-D, normalised)."""

        def members(s: int, batch: Batch | None, j: int, takes: list[tuple[int, int, int]]
                    ) -> Tensor:
            context, noisy, domain, guess = self._inputs(s, batch, j, takes)
            return denoise_draws(denoiser, context, noisy, domain, self.sigma,
                                 first_guess=guess)

        return self._gather(members)[self.hidden].double()

    def __call__(self, denoiser: Denoiser) -> float:
        """RMSE of the fill at the withheld cells (normalised units)."""
        network = self.network(denoiser)
        centre = network
        if self.first is not None:
            first = self.first.double()
            share = fit_correction(self.targets.cpu().numpy(), network.cpu().numpy(),
                                   first.cpu().numpy())
            centre = first + share * (network - first)
        return math.sqrt(float(((centre - self.targets) ** 2).mean()))
