"""Reach across the record: a Gauss–Markov smoother in time that the denoiser starts from.

Each cell's anomaly z(τ) (normalised units) is a stationary Gaussian process in time τ with
the Matérn-3/2 covariance

    k(Δ) = (1 + λ|Δ|) exp(−λ|Δ|),      λ = √3 / L   (L: the time scale, in the record's units),

whose state x = (z, ż) is Markov, so irregular sampling, missing days and frames without any
observation cost nothing special: over a step Δ,

    x(τ + Δ) = A(Δ) x(τ) + η,      A(Δ) = e^(−λΔ) [[1 + λΔ, Δ], [−λ²Δ, 1 − λΔ]],
    η ~ N(0, Q(Δ)),                Q(Δ) = P∞ − A P∞ Aᵀ,      P∞ = diag(1, λ²).

A frame observes a cell through its own value (noise variance r, the nugget) and through its
neighbours up to ``radius`` cells away: a neighbour at distance d is read as an observation of
the cell with noise variance v(d) = κ (2 (1 − c(d)) + r), with c the spatial correlation
measured on the record and κ ≥ 1 an inflation for the errors neighbours share. Frame t thus
brings the information (a small convolution of the context)

    J_t = Σ_n m_n / v(d_n),      h_t = Σ_n m_n z_n / v(d_n),

Instead of its neighbours, a cell can be informed by the kriging of its frame (Matérn-3/2 in
space, length scale ℓ, :mod:`ctxq_cli.kriging`): the kriged mean μ and the variance bound σ² of
kriging from the nearest observation become an observation of the cell with precision
J = (1/σ² − 1)/κ and value μ/(1 − σ²), which alone gives back μ. It reaches into gaps wider
than the neighbourhood and weighs clustered observations as kriging does, not as independent.

Where a frame has variability of its own that time cannot know (a year's weather in a record
of yearly means), the frame's own observations can instead correct its prediction by the other
frames, as optimal interpolation corrects a background: the prediction's departures at the
observed cells, in units of its standard deviation, are kriged (length scale ℓ_a, nugget τ_a²)
and added back (:meth:`Smoother.analysis`). On the A1B air temperatures under clouds this took
the first guess from 0.75 K to 0.37 K.

The posterior of z at each frame given all frames follows from a Kalman filter forward, one
backward (the process is reversible: the reversed state is (z, −ż) with the same A and Q), and
their product, the two-filter smoother:

    Σ⁻¹ = P_f⁻¹ + P_b⁻¹ − P∞⁻¹,      μ = Σ (P_f⁻¹ m_f + P_b⁻¹ m_b),

with (m_f, P_f) filtered forward through frame t and (m_b, P_b) predicted backward from the
frames after it (with the analysis, (m_f, P_f) is predicted into frame t, not filtered
through it, and frame t enters through the analysis alone). ``L``, ``r``, the radius or ℓ, κ,
ℓ_a and τ_a² are chosen by cross-validation on
observations hidden like the real gaps (:func:`fit_smoother`), as DINEOF chooses its modes.

The denoiser sees the posterior mean and standard deviation of every frame of its window and
predicts a correction to that mean. For the context-query contract the smoother of a training
window is computed from the window's *context* only: the frames of the record outside the window
come in through two messages (the forward state entering the window, the backward state leaving
it), which use every observation of those frames, and the window's own frames contribute their
context cells alone, so no query value reaches any input.

References:
    Hartikainen, J. & Särkkä, S. (2010). Kalman filtering and smoothing solutions to temporal
    Gaussian process regression models. IEEE MLSP.
    Fraser, D. & Potter, J. (1969). The optimum linear smoother as a combination of two optimum
    linear filters. IEEE Trans. Automatic Control 14, 387–390.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ctxq_cli.frames import chunk_frames
from ctxq_cli.kriging import frame_sum, krige, nearest_variance

log = logging.getLogger(__name__)

KRIGING_NUGGET = 0.01   # the kriging solves' smallest nugget: a few iterations then suffice
STATE = 5            # a cell's Gaussian state: mean (z, ż) and covariance (p00, p01, p11)
DTYPE = torch.float64   # the filters subtract nearly equal information; float32 is not enough
# Kriging is a first guess: in float32 it is within about 10⁻³ of the field's scale of the
# float64 answer (far below any fill's error) and takes half the time, most of a training step's
KRIGING_DTYPE = torch.float32
BATCH_CELLS = 2 ** 20   # cells whose kriging runs at once: about 150 MB of FFT buffers


@dataclass(frozen=True)
class SmootherConfig:
    """The smoother's parameters, fitted on a record and stored with the model."""

    time_scale: float                 # L, in ``time_unit``
    nugget: float = 1e-3              # r, the own-value noise variance (normalised units)
    radius: int = 0                   # neighbours up to this many cells away inform a cell
    inflation: float = 4.0            # κ, the neighbours' noise inflation
    correlation: tuple[float, ...] = ()   # c(d) at the distances of ``distances(radius)``
    time_unit: str = "frames"
    step: float = 1.0                 # the training record's median time step, in time_unit
    spatial_scale: float = 0.0        # ℓ of kriging each frame's unobserved cells (0: off)
    analysis_scale: float = 0.0       # ℓ of kriging each frame's departures from time (0: off)
    analysis_nugget: float = 0.1      # the departures' noise, relative to their variance

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmootherConfig:
        """Rebuild from :meth:`to_dict`."""
        return cls(**{**data, "correlation": tuple(data.get("correlation", ()))})

    def describe(self) -> str:
        """One line for the log."""
        near = (f", each frame kriged (length scale {self.spatial_scale:.3g} cells, inflation "
                f"{self.inflation:g})" if self.spatial_scale else
                f", neighbours within {self.radius} cell(s) (inflation {self.inflation:g})"
                if self.radius else ", own values only")
        analysis = (f"; each frame's departures from the other frames kriged (length scale "
                    f"{self.analysis_scale:.3g} cells, nugget {self.analysis_nugget:g})"
                    if self.analysis_scale else "")
        return (f"time scale {self.time_scale:.3g} {self.time_unit}, nugget {self.nugget:.2g}"
                f"{near}{analysis}")


def frame_batches(count: int, cells: int, reverse: bool = False) -> list[slice]:
    """Consecutive frames of a record of ``count`` frames of ``cells`` cells each, in batches of
    at most BATCH_CELLS cells (one frame at least), in the order a filter meets them."""
    size = max(1, BATCH_CELLS // max(cells, 1))
    parts = [slice(a, min(a + size, count)) for a in range(0, count, size)]
    return parts[::-1] if reverse else parts


def distances(radius: int) -> list[float]:
    """The distinct neighbour distances within ``radius`` cells, in increasing order (0 first)."""
    r = np.arange(-radius, radius + 1)
    d = np.sqrt(r[:, None] ** 2 + r[None, :] ** 2)
    return sorted({float(x) for x in d[d <= radius + 1e-9].ravel()})


def kernel(config: SmootherConfig) -> np.ndarray:
    """Information weights 1/v(d) of a cell's neighbourhood, (2R+1, 2R+1); 0 beyond the radius."""
    radius = config.radius
    r = np.arange(-radius, radius + 1)
    d = np.sqrt(r[:, None] ** 2 + r[None, :] ** 2)
    weights = np.zeros_like(d)
    for distance, corr in zip(distances(radius), (1.0, *config.correlation)):
        noise = config.nugget if distance == 0 else config.inflation * (
            2 * (1 - min(corr, 1.0)) + config.nugget)
        weights[np.isclose(d, distance)] = 1.0 / noise
    return weights


class Smoother:
    """The Gauss–Markov smoother of :mod:`ctxq_cli.temporal` for one fitted configuration."""

    def __init__(self, config: SmootherConfig) -> None:
        self.config = config
        self.lam = math.sqrt(3.0) / max(config.time_scale, 1e-12)
        self._kernel = torch.from_numpy(kernel(config))

    # ------------------------------------------------------------------ building blocks

    def information(self, values: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """(J, h) of frames (..., H, W) of normalised values and their observed cells."""
        shape = values.shape
        m = observed.to(DTYPE).reshape(-1, 1, *shape[-2:])
        z = torch.where(observed, values.to(DTYPE), 0).reshape(-1, 1, *shape[-2:])
        k = self._kernel.to(m.device)[None, None]
        pad = self.config.radius
        # zero padding: nothing is observed beyond the grid (or tile) edge
        j = F.conv2d(m, k, padding=pad) if pad else m * k[0, 0]
        h = F.conv2d(z, k, padding=pad) if pad else z * k[0, 0]
        j, h = j.reshape(shape), h.reshape(shape)
        if self.config.spatial_scale:
            jk, hk = self.kriged(values, observed)
            j, h = j + jk, h + hk
        return j, h

    @staticmethod
    def krige(values: Tensor, observed: Tensor, length_scale: float, nugget: float) -> Tensor:
        """Each frame's kriging mean (..., H, W), solved in KRIGING_DTYPE, returned in DTYPE."""
        return krige(values, observed, length_scale, nugget, dtype=KRIGING_DTYPE).to(DTYPE)

    def kriged(self, values: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """(J, h) that the kriging of each frame brings its unobserved cells.

        Kriging gives a posterior N(μ, σ²) under the unit prior; read as an observation y of
        the cell with precision J = (1/σ² − 1)/κ, so that alone it gives back μ, it is
        y = μ/(1 − σ²). σ² is the nearest-observation bound of :mod:`ctxq_cli.kriging`.
        """
        c = self.config
        mean = self.krige(values, observed, c.spatial_scale, max(c.nugget, KRIGING_NUGGET))
        var = nearest_variance(observed, c.spatial_scale, math.ceil(3 * c.spatial_scale))
        var = var.clamp(min=1e-3)
        j = torch.where(observed, 0.0, (1 / var - 1) / c.inflation)
        return j, j * mean / (1 - var).clamp(min=1e-3)

    def analysis(self, mean: Tensor, var: Tensor, values: Tensor, observed: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """Mean and variance of z at frames (..., H, W) from their prediction by the other
        frames (mean, var) and their own observations: the prediction's departures, kriged.

        The departures d = (z − mean)/√var at the observed cells are a field with the Matérn
        correlation of length ℓ and nugget τ²; their kriging, scaled back by √var (at most the
        largest √var of the frame's observed cells), is added to the prediction. The variance
        is var times the departures' mean square in the frame (the temporal model's own
        variance is too small where its time scale is too long, as for years that each have
        weather of their own) times the nearest-observation bound.
        """
        c = self.config
        sd = var.clamp(min=1e-12).sqrt()
        departure = torch.where(observed, (values.to(DTYPE) - mean) / sd, 0)
        kriged = self.krige(departure, observed, c.analysis_scale, c.analysis_nugget)
        count = observed.sum((-2, -1), keepdim=True)
        square = torch.where(count > 0, frame_sum(departure ** 2) / count.clamp(min=1), 1.0)
        near = nearest_variance(observed, c.analysis_scale, math.ceil(3 * c.analysis_scale))
        floor = c.analysis_nugget / (1 + c.analysis_nugget)
        # A cell the other frames know less well than any observed cell of its frame (never
        # observed in the record: a region always under cloud) takes the departures back at
        # the observed cells' largest std: at its own, near 1, departures that were large only
        # because the observed cells were well predicted came back tens of the field's scale.
        # (a frame without observations has no departures: its kriging is exactly 0)
        top = torch.where(observed, sd, 0.0).amax((-2, -1), keepdim=True)
        return mean + torch.minimum(sd, top) * kriged, var * square * near.clamp(min=floor)

    def prior(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """The stationary state (…, 5): mean 0, covariance P∞."""
        state = torch.zeros((*shape, STATE), dtype=DTYPE, device=device)
        state[..., 2] = 1.0
        state[..., 4] = self.lam ** 2
        return state

    def transition(self, dt: Tensor) -> tuple[Tensor, ...]:
        """A(Δ) and Q(Δ) as (a00, a01, a10, a11, q00, q01, q11), each shaped like ``dt``.

        An infinite Δ (no previous frame) gives A = 0, Q = P∞: the stationary prior.
        """
        lam = self.lam
        dt = dt.to(DTYPE).clamp(min=0)
        finite = torch.isfinite(dt)
        d = torch.where(finite, dt, torch.zeros_like(dt))
        e = torch.where(finite, torch.exp(-lam * d), torch.zeros_like(d))
        a00, a01 = e * (1 + lam * d), e * d
        a10, a11 = -e * lam ** 2 * d, e * (1 - lam * d)
        p11 = lam ** 2
        q00 = 1 - (a00 * a00 + a01 * a01 * p11)
        q01 = -(a00 * a10 + a01 * a11 * p11)
        q11 = p11 - (a10 * a10 + a11 * a11 * p11)
        return a00, a01, a10, a11, q00, q01, q11

    @staticmethod
    def predict(state: Tensor, tr: tuple[Tensor, ...]) -> Tensor:
        """Carry a state (…, 5) over one step; ``tr`` broadcasts against the state's cells."""
        a00, a01, a10, a11, q00, q01, q11 = tr
        m0, m1, p00, p01, p11 = state.unbind(-1)
        n0 = a00 * m0 + a01 * m1
        n1 = a10 * m0 + a11 * m1
        # A P Aᵀ + Q, written out for the symmetric 2×2 P
        r00 = a00 * a00 * p00 + 2 * a00 * a01 * p01 + a01 * a01 * p11 + q00
        r01 = a00 * a10 * p00 + (a00 * a11 + a01 * a10) * p01 + a01 * a11 * p11 + q01
        r11 = a10 * a10 * p00 + 2 * a10 * a11 * p01 + a11 * a11 * p11 + q11
        return torch.stack([n0, n1, r00, r01, r11], dim=-1)

    def carry(self, state: Tensor, gap: Tensor) -> Tensor:
        """A state (…, 5) carried over one time step ``gap`` (a one-element tensor)."""
        return self.predict(state, self.transition(gap.reshape(1)))

    @staticmethod
    def update(state: Tensor, j: Tensor, h: Tensor) -> Tensor:
        """Condition a state (…, 5) on information (J, h) about z (…): P ← (P⁻¹ + e eᵀ J)⁻¹."""
        m0, m1, p00, p01, p11 = state.unbind(-1)
        s = 1 + j * p00
        innovation = (h - j * m0) / s
        return torch.stack([m0 + p00 * innovation, m1 + p01 * innovation,
                            p00 - p00 * p00 * j / s, p01 - p00 * p01 * j / s,
                            p11 - p01 * p01 * j / s], dim=-1)

    def combine(self, forward: Tensor, backward: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance of z from a forward-filtered state and a backward-predicted
        one (in reversed coordinates, (z, −ż))."""
        fm0, fm1, f00, f01, f11 = forward.to(DTYPE).unbind(-1)
        bm0, bm1, b00, b01, b11 = backward.to(DTYPE).unbind(-1)
        bm1, b01 = -bm1, -b01                    # reversed time: the velocity changes sign
        fdet = (f00 * f11 - f01 * f01).clamp(min=1e-300)
        bdet = (b00 * b11 - b01 * b01).clamp(min=1e-300)
        # information matrices and vectors
        i00 = f11 / fdet + b11 / bdet - 1.0
        i01 = -f01 / fdet - b01 / bdet
        i11 = f00 / fdet + b00 / bdet - 1.0 / self.lam ** 2
        v0 = (f11 * fm0 - f01 * fm1) / fdet + (b11 * bm0 - b01 * bm1) / bdet
        v1 = (-f01 * fm0 + f00 * fm1) / fdet + (-b01 * bm0 + b00 * bm1) / bdet
        det = (i00 * i11 - i01 * i01).clamp(min=1e-300)
        mean = (i11 * v0 - i01 * v1) / det
        var = (i11 / det).clamp(min=0.0, max=1.0)
        return mean, var

    # ------------------------------------------------------------------ whole records

    def record(self, values: Tensor, observed: Tensor, times: Tensor,
               start: Tensor | None = None, reverse: bool = False) -> Tensor:
        """Filtered states after each frame (T, …, 5) in float32, every observation used.

        values, observed: (T, …, H, W); times (T,). ``start`` is the state predicted into the
        first frame filtered (the prior when None). ``reverse`` runs from the last frame back.
        Each frame's state is rounded to float32 before it is carried on, so a record filtered
        in pieces (chunk by chunk) gives the same bits as one filtered whole.
        """
        out = torch.empty((*values.shape, STATE), dtype=torch.float32, device=values.device)
        state = self.prior(values.shape[1:], values.device) if start is None else start
        previous = None
        for part in frame_batches(len(times), values[0].numel(), reverse):
            # what a frame says does not depend on the state: a batch of frames at once
            j, h = self.information(values[part], observed[part])
            frames = range(part.start, part.stop)
            for t in reversed(frames) if reverse else frames:
                if previous is not None:
                    state = self.carry(state, (times[previous] - times[t]).abs())
                out[t] = self.update(state, j[t - part.start], h[t - part.start])
                state = out[t].to(DTYPE)
                previous = t
        return out

    def smooth(self, values: Tensor, observed: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance of z at every frame (T, …, H, W), from every frame."""
        return posterior(self, record_states(self, values, observed, times),
                         data=(values, observed))

    # ------------------------------------------------------------------ windows

    def window(self, values: Tensor, context: Tensor, entering: Tensor, leaving: Tensor,
               steps: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and std of z in windows of W frames given their context only.

        values, context: (B, W, …, H, W); ``entering`` (B, …, H, W, 5): the forward state
        predicted into the first frame from the frames before the window; ``leaving`` the
        backward state predicted into the last frame from the frames after it; ``steps``
        (B, W − 1): the time from each frame of the window to the next.
        """
        b, w = values.shape[:2]
        j, h = self.information(values, context)
        extra = (1,) * (values.dim() - 2)          # broadcast a (B,) step over the cells

        def step(i: int) -> tuple[Tensor, ...]:
            return self.transition(steps[:, i].reshape(b, *extra))

        # with the analysis a frame enters through it alone: keep the states predicted into
        # each frame, else those updated with it
        analysis = bool(self.config.analysis_scale)
        kept = []
        state = entering
        for i in range(w):
            if i:
                state = self.predict(state, step(i - 1))
            updated = self.update(state, j[:, i], h[:, i])
            kept.append(state if analysis else updated)
            state = updated
        mean = torch.empty(values.shape, dtype=DTYPE, device=values.device)
        var = torch.empty_like(mean)
        state = leaving
        for i in range(w - 1, -1, -1):
            if i < w - 1:
                state = self.predict(self.update(state, j[:, i + 1], h[:, i + 1]), step(i))
            mean[:, i], var[:, i] = self.combine(kept[i], state)
        if analysis:
            mean, var = self.analysis(mean, var, values, context)
        return mean, var.sqrt()


# ----------------------------------------------------------------------------- records


class StateFile:
    """Per-frame states (T, …, 5) in float32 in an anonymous scratch file in ``$TMPDIR`` (gone
    when closed), written and read a frame at a time: the states of a record too large for
    memory. Frames are read with ``pread``, not mapped, so what was read does not stay in the
    process's memory (unless ``$TMPDIR`` is itself in memory, a tmpfs).
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device = torch.device("cpu")
                 ) -> None:
        self.shape, self.device = shape, device
        self._frame = math.prod(shape[1:])
        self._file = tempfile.TemporaryFile(prefix="ctxq-states-")
        self._file.truncate(shape[0] * self._frame * 4)

    def __setitem__(self, frames: slice, states: Tensor) -> None:
        a = frames.indices(self.shape[0])[0]
        data = memoryview(np.ascontiguousarray(states.detach().cpu().numpy(),
                                               dtype=np.float32)).cast("B")
        offset, done = a * self._frame * 4, 0
        while done < len(data):     # one write may be short (Linux: at most ~2 GiB)
            done += os.pwrite(self._file.fileno(), data[done:], offset + done)

    def __getitem__(self, index: Tensor | int) -> Tensor:
        frames = [index] if isinstance(index, int) else index.reshape(-1).tolist()
        out = np.empty((len(frames), *self.shape[1:]), np.float32)
        for i, t in enumerate(frames):
            raw = os.pread(self._file.fileno(), self._frame * 4, int(t) * self._frame * 4)
            out[i] = np.frombuffer(raw, np.float32).reshape(self.shape[1:])
        tensor = torch.from_numpy(out).to(self.device)
        return tensor[0] if isinstance(index, int) else tensor

    def to(self, device: torch.device) -> StateFile:
        """Frames read from now on come out on ``device``."""
        self.device = device
        return self

    def close(self) -> None:
        """Give the scratch space back."""
        self._file.close()


@dataclass
class RecordStates:
    """Forward- and backward-filtered states of a whole record (every observation used), and
    its times; what a window of it needs from outside itself."""

    forward: Tensor | StateFile     # (T', C, H, W, 5): every frame, or the kept ones
    backward: Tensor | StateFile    # (T', C, H, W, 5), reversed coordinates
    times: Tensor                   # (T,) float64
    slots: Tensor | None = None     # (T,) where each frame's states are (−1: not kept)

    def to(self, device: torch.device) -> RecordStates:
        """The states on ``device``."""
        return RecordStates(self.forward.to(device), self.backward.to(device),
                            self.times.to(device),
                            None if self.slots is None else self.slots.to(device))

    def close(self) -> None:
        """Give back the scratch files of states kept in them."""
        for states in (self.forward, self.backward):
            if isinstance(states, StateFile):
                states.close()

    def index(self, frames: Tensor) -> Tensor:
        """Where the states of ``frames`` (which must have been kept) are stored."""
        if self.slots is None:
            return frames
        slots = self.slots[frames]
        if bool((slots < 0).any()):
            raise ValueError("the states of a frame that was not kept were asked for")
        return slots


def filter_record(smoother: Smoother, read: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                  frames: int, times: Tensor, memory: float = math.inf,
                  device: torch.device = torch.device("cpu"), keep: np.ndarray | None = None
                  ) -> RecordStates:
    """Filter a record forward and backward with every observation, a range of frames read at
    a time (``read(a, b)``: normalised values and observed (b − a, C, H, W); about
    :data:`ctxq_cli.frames.CHUNK_BYTES` per range).

    Only the states of frames ``keep`` (bool (T,); all by default) are kept: in float32 (half
    the memory; a window's arithmetic is float64 again), on ``device`` when both directions fit
    ``memory`` bytes, else in scratch files (:class:`StateFile`). Filtered in pieces they are
    the same, bit for bit, as filtered whole (:meth:`Smoother.record`).
    """
    times = times.to(DTYPE).to(device)
    cells = read(0, 1)[0].shape[1:]
    slot = None if keep is None else np.where(keep, np.cumsum(keep) - 1, -1)
    step = chunk_frames(read)
    shape = (frames if keep is None else int(keep.sum()), *cells, STATE)
    in_memory = 2 * 4 * math.prod(shape) <= memory

    def store() -> Tensor | StateFile:
        return (torch.empty(shape, dtype=torch.float32, device=device) if in_memory
                else StateFile(shape, device))

    if not in_memory:
        log.info("the smoother's states of %d frames (%.1f GB) go to scratch files in %s",
                 shape[0], 2 * 4 * math.prod(shape) / 1e9, tempfile.gettempdir())
    forward, backward = store(), store()
    for out, reverse in ((forward, False), (backward, True)):
        state = None
        starts = range(0, frames, step)
        for a in (reversed(starts) if reverse else starts):
            b = min(a + step, frames)
            values, observed = (torch.from_numpy(x).to(device) for x in read(a, b))
            start = None
            if state is not None:
                gap = (times[b] - times[b - 1]) if reverse else (times[a] - times[a - 1])
                start = smoother.carry(state, gap)
            run = smoother.record(values, observed, times[a:b], start, reverse)
            if keep is None:
                out[a:b] = run
            else:
                for i in np.flatnonzero(keep[a:b]):      # kept frames, one at a time
                    out[int(slot[a + i]):int(slot[a + i]) + 1] = run[i:i + 1]
            state = (run[0] if reverse else run[-1]).to(DTYPE)
    return RecordStates(forward, backward, times,
                        None if slot is None else torch.from_numpy(slot).to(device))


def record_states(smoother: Smoother, values: Tensor, observed: Tensor,
                  times: Tensor) -> RecordStates:
    """Filter a record (T, C, H, W) held as tensors, forward and backward, in memory."""
    return filter_record(smoother, lambda a, b: (values[a:b].cpu().numpy(),
                                                 observed[a:b].cpu().numpy()),
                         len(times), times, device=values.device)


def posterior(smoother: Smoother, states: RecordStates, frames: slice | None = None,
              data: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Posterior mean and variance of z at ``frames`` of a filtered record (all by default):
    the forward state of each frame with the backward state of the next carried back to it.

    With the departures' analysis on, ``data`` holds the normalised values and observed cells
    of those frames, and each frame's prediction from the others (the forward state of the
    frame before, carried on) is corrected by them, a batch of frames at a time.
    """
    count = len(states.times)
    index = torch.arange(count, device=states.times.device)[frames or slice(None)]
    cells = states.forward.shape[1:-1]

    def carried(source: Tensor | StateFile, to: Tensor, at: Tensor) -> Tensor:
        """States of frames ``at`` carried to frames ``to`` (an infinite gap where at == to)."""
        gap = torch.where(at != to, (states.times[at] - states.times[to]).abs(),
                          torch.full_like(states.times[to], math.inf))
        return smoother.predict(source[states.index(at)],
                                smoother.transition(gap.reshape(-1, *(1,) * len(cells))))

    backward = carried(states.backward, index, (index + 1).clamp(max=count - 1))
    if not smoother.config.analysis_scale:
        return smoother.combine(states.forward[states.index(index)], backward)
    if data is None:
        raise ValueError("the smoother's analysis needs the frames' values and observed cells")
    forward = carried(states.forward, index, (index - 1).clamp(min=0))
    mean, var = smoother.combine(forward, backward)
    values, observed = data
    for part in frame_batches(len(index), mean[0].numel()):
        mean[part], var[part] = smoother.analysis(mean[part], var[part], values[part],
                                                  observed[part])
    return mean, var


def window_messages(smoother: Smoother, states: RecordStates, starts: Tensor, window: int
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """(entering, leaving, steps) of windows starting at ``starts`` (B,) in a record.

    States come out as (B, C, H, W, 5); at the record's ends the prior stands in.
    """
    times = states.times
    count = len(times)
    inf = torch.full((1,), math.inf, dtype=DTYPE, device=times.device)
    padded = torch.cat([inf * -1, times, inf])            # times[-1] = −∞, times[T] = +∞
    idx = starts.to(times.device).long()
    last = idx + window - 1
    before = (idx - 1).clamp(min=0)
    after = (last + 1).clamp(max=count - 1)
    cells = states.forward.shape[1:-1]
    extra = (1,) * len(cells)
    gap_in = (padded[idx + 1] - padded[idx]).reshape(-1, *extra)
    gap_out = (padded[last + 2] - padded[last + 1]).reshape(-1, *extra)
    entering = smoother.predict(states.forward[states.index(before)],
                                smoother.transition(gap_in))
    leaving = smoother.predict(states.backward[states.index(after)],
                               smoother.transition(gap_out))
    frames = idx[:, None] + torch.arange(window, device=idx.device)[None]
    steps = times[frames[:, 1:]] - times[frames[:, :-1]]
    return entering, leaving, steps


def first_guess(smoother: Smoother, values: Tensor, context: Tensor,
                messages: tuple[Tensor, Tensor, Tensor], window: int) -> Tensor:
    """The denoiser's first guess (B, 2F, H, W): the smoother's mean and standard deviation in
    each frame of windows (B, F = W·C, H, W), from their context and the record's messages.

    ``messages`` with a batch of one serve every window of the batch (the members of one
    window at inference).
    """
    b, f, h, w = values.shape
    shape = (b, window, f // window, h, w)
    entering, leaving, steps = messages
    if entering.shape[0] != b:
        entering, leaving = entering.expand(b, *entering.shape[1:]), leaving.expand(
            b, *leaving.shape[1:])
        steps = steps.expand(b, -1)
    with torch.autocast(values.device.type, enabled=False):   # the filters need float64
        mean, std = smoother.window(values.reshape(shape), context.reshape(shape), entering,
                                    leaving, steps)
    return torch.cat([mean.reshape(b, f, h, w), std.reshape(b, f, h, w)], dim=1).float()


# ----------------------------------------------------------------------------- fitting


def spatial_correlation(values: np.ndarray, observed: np.ndarray, radius: int) -> tuple[float, ...]:
    """Correlation of normalised anomalies at each neighbour distance within ``radius``
    (distance 0 excluded), pooled over frames, variables and directions."""
    out = []
    r = np.arange(-radius, radius + 1)
    for distance in distances(radius)[1:]:
        num = den_a = den_b = 0.0
        for dy in r:
            for dx in r:
                if not np.isclose(math.hypot(dy, dx), distance):
                    continue
                a, b, ma, mb = _shifted(values, observed, int(dy), int(dx))
                both = ma & mb
                num += float(np.sum(a[both] * b[both], dtype=np.float64))
                den_a += float(np.sum(a[both] ** 2, dtype=np.float64))
                den_b += float(np.sum(b[both] ** 2, dtype=np.float64))
        corr = num / math.sqrt(den_a * den_b) if den_a > 0 and den_b > 0 else 0.0
        out.append(float(np.clip(corr, -1.0, 1.0)))
    return tuple(out)


def _middle(grid: tuple[int, int], size: int) -> tuple[slice, slice]:
    """The middle ``size`` × ``size`` cells of a grid (all of a smaller one)."""
    return tuple(slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + size) for n in grid)


def _shifted(values: np.ndarray, observed: np.ndarray, dy: int, dx: int
             ) -> tuple[np.ndarray, ...]:
    """Overlapping parts of a (…, H, W) array and its shift by (dy, dx), with their masks."""
    h, w = values.shape[-2:]
    ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    return (values[..., ys, xs], values[..., yd, xd], observed[..., ys, xs],
            observed[..., yd, xd])


def matern_scale(neighbour: float) -> float:
    """ℓ of the Matérn-3/2 correlation that is ``neighbour`` at one cell (0 if not in (0, 1))."""
    if not 0.0 < neighbour < 1.0:
        return 0.0
    lo, hi = 1e-3, 1e3       # c(1) rises with ℓ: bisect in log ℓ
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        a = math.sqrt(3.0) / mid
        lo, hi = (mid, hi) if (1 + a) * math.exp(-a) < neighbour else (lo, mid)
    return math.sqrt(lo * hi)


FIT_FRAMES = 200     # frames of the record's middle the parameters are cross-validated on
FIT_CELLS = 128      # ... and at most this many cells a side of the grid's middle


def fit_smoother(read: Callable[[int, int], tuple[np.ndarray, np.ndarray]], frames: int,
                 domain: np.ndarray, times: np.ndarray, time_unit: str, seed: int = 0
                 ) -> SmootherConfig:
    """Choose L, r, the radius and κ by cross-validation on observations hidden like the gaps.

    ``read(a, b)`` gives frames [a, b) of a record, normalised, and their observed cells,
    (b − a, C, H, W); times (T,). Up to ``FIT_FRAMES`` frames of the record's middle (and
    ``FIT_CELLS`` a side) are read and take part; a tenth of their observations is
    hidden in the shape of the real gaps (:func:`ctxq_cli.withhold.withhold`), the smoother
    fills them from the rest, and each candidate is scored by the mean squared error there. The
    search is coordinate-wise over a log-spaced grid of time scales (from a quarter of the
    median time step to four times the record's length), nuggets, radii and inflations, then
    kriging each frame (ℓ from the correlation of neighbouring cells) against the neighbours,
    then the analysis of each frame's departures from the others (ℓ_a, τ_a²) against none.
    """
    from ctxq_cli.withhold import withhold

    lo = max(0, (frames - FIT_FRAMES) // 2)
    hi = min(frames, lo + FIT_FRAMES)
    cells = _middle(domain.shape, FIT_CELLS)
    domain = domain[cells]
    size = chunk_frames(read)
    parts = [tuple(x[(slice(None), slice(None), *cells)] for x in read(a, min(a + size, hi)))
             for a in range(lo, hi, size)]     # cropped a range at a time
    v, o = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
    o, tm = o & domain[None, None], times[lo:hi]
    hidden = withhold(o, domain, 0.1, "mask", seed) if o.sum() > 20 else np.zeros_like(o)
    steps = np.diff(np.asarray(times, dtype=np.float64))
    step = float(np.median(steps[steps > 0])) if (steps > 0).any() else 1.0
    if not hidden.any():
        return SmootherConfig(time_scale=step, time_unit=time_unit, step=step)
    kept = o & ~hidden
    vt = torch.from_numpy(np.where(kept, v, 0)).to(DTYPE)
    kt = torch.from_numpy(kept)
    tt = torch.from_numpy(np.asarray(tm, dtype=np.float64))
    target = torch.from_numpy(v[hidden]).to(DTYPE)
    where = torch.from_numpy(hidden)
    correlation = spatial_correlation(np.where(kept, v, 0), kept, 2)

    def error(config: SmootherConfig) -> float:
        mean, _ = Smoother(config).smooth(vt, kt, tt)
        return float(torch.mean((mean[where] - target) ** 2))

    span = max(float(tm[-1] - tm[0]), step)
    scales = [float(s) for s in step * 2.0 ** np.arange(-2, 12) if s <= 4 * span]
    config = SmootherConfig(time_scale=scales[0], radius=0, time_unit=time_unit, step=step)
    best = {}

    def score(c: SmootherConfig) -> float:
        key = (c.time_scale, c.nugget, c.radius, c.inflation, c.spatial_scale, c.analysis_scale,
               c.analysis_nugget)
        if key not in best:
            best[key] = error(c)
        return best[key]

    def choose(candidates: list[SmootherConfig]) -> SmootherConfig:
        return min(candidates, key=score)

    config = choose([replace(config, time_scale=s) for s in scales])
    config = choose([replace(config, nugget=n) for n in (1e-3, 1e-2, 0.05, 0.2)])
    config = choose([replace(config, radius=r, inflation=k,
                             correlation=correlation[:len(distances(r)) - 1])
                     for r in (0, 1, 2) for k in ((1.0,) if r == 0 else (1.0, 2.0, 4.0, 8.0))])
    # or each frame kriged instead of its neighbours (independent frames: time gives nothing)
    scale = matern_scale(correlation[0]) if correlation else 0.0
    if scale > 0:
        config = choose([config] + [replace(config, radius=0, correlation=(), inflation=k,
                                            spatial_scale=scale * f)
                                    for f in (0.7, 1.0) for k in (1.0, 4.0)])
    # and each frame's departures from its prediction by the other frames kriged: time gives
    # the slow part, the frame's own observations the rest (years with weather of their own)
    if scale > 0:
        config = choose([config] + [replace(config, analysis_scale=scale * f, analysis_nugget=n)
                                    for f in (0.5, 1.0, 2.0) for n in (0.01, 0.1)])
    # the time scale and nugget again, the time scale between its grid neighbours, with the
    # spatial part chosen
    config = choose([replace(config, time_scale=config.time_scale * f)
                     for f in (0.5, 0.71, 0.84, 1.0, 1.19, 1.41, 2.0)])
    config = choose([replace(config, nugget=n) for n in (1e-3, 1e-2, 0.05, 0.2)])
    # the anomalies' own RMS is the error of no first guess: the smoother's skill is below it
    log.info("temporal smoother: %s (cross-validated RMSE %.3f on %d hidden observations, "
             "%.3f without a first guess; %d candidates)", config.describe(),
             math.sqrt(score(config)), int(hidden.sum()),
             float(torch.sqrt(torch.mean(target ** 2))), len(best))
    return config
