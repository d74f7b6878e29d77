"""A compact 2-D U-Net with FiLM noise conditioning.

Frames of a time window and variables are stacked as channels, so one 2-D network sees the
temporal context at the cost of a single image pass (a 3-D network costs W times more on CPU).
An optional space-to-depth stem folds p×p cells into channels, cutting the cost of the
full-resolution level by p² on CPU. Each level holds residual blocks
``h ← h + conv(SiLU(FiLM(norm(conv(SiLU(norm(x)))))))`` whose FiLM scale and shift come from an
embedding of the noise level. An optional learned position map (a few channels per cell of the
training grid) is appended to the input, so the network can learn what is fixed in space on a
fixed grid: coasts, climatology, the spatial patterns of variability. Optional self-attention
over the coarsest level lets every cell see the whole tile: a gap is then filled from
large-scale patterns (the teleconnections EOF methods exploit), not only from its surroundings.
No dropout: in each residual block (p = 0.1) it filled worse at the same validation loss
(examples/BENCHMARKS.md, 'Regularisation').

Input (B, C_in, H, W) with H and W divisible by ``UNetConfig.multiple``; output (B, C_out, H, W).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the denoiser's backbone."""

    in_channels: int
    out_channels: int
    channels: tuple[int, ...] = (32, 64, 96)
    blocks_per_level: int = 1
    embedding: int = 64
    patch: int = 1       # space-to-depth factor of the stem: p×p cells become one position
    attention_heads: int = 0   # self-attention at the coarsest level (0: none)
    position_channels: int = 0   # learned channels per cell of the training grid (0: none)
    grid: tuple[int, int] | None = None   # the (padded) training grid a position map covers

    @property
    def multiple(self) -> int:
        """Grid sizes must be divisible by this."""
        return 2 ** (len(self.channels) - 1) * self.patch

    def to_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


def _norm(channels: int) -> nn.GroupNorm:
    """Group normalisation with up to 8 groups."""
    groups = math.gcd(channels, 8)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Residual block with FiLM conditioning on the noise embedding."""

    def __init__(self, cin: int, cout: int, embedding: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(embedding, 2 * cout)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, cin, H, W), emb: (B, E) -> (B, cout, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Attention(nn.Module):
    """Multi-head self-attention over all positions, added as a residual."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} attention heads")
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        # not zero-initialised: a zero output would leave q and k without gradients at first,
        # and on A1B under clouds it trained to a worse fill in a 10000-step budget
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        q, k, v = (self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
                   .transpose(-1, -2).unbind(1))             # (B, heads, HW, C/heads) each
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


def noise_embedding(c_noise: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of the (log) noise level: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=c_noise.device) * (-math.log(1e3) / half))
    angles = c_noise[:, None].float() * freqs[None] * 100
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class UNet(nn.Module):
    """Encoder-decoder with skip connections, one resolution halving per level."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        e = config.embedding
        self.embed = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        ch = config.channels
        p2 = config.patch ** 2
        self.position = None
        if config.position_channels:
            if config.grid is None:
                raise ValueError("a position map needs the training grid")
            self.position = nn.Parameter(0.5 * torch.randn(config.position_channels,
                                                           *config.grid))
        self.stem = nn.Conv2d((config.in_channels + config.position_channels) * p2, ch[0], 3,
                              padding=1)
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        cin = ch[0]
        for cout in ch:
            self.down.append(nn.ModuleList([ResBlock(cin if i == 0 else cout, cout, e)
                                            for i in range(config.blocks_per_level)]))
            cin = cout
        self.mid = ResBlock(ch[-1], ch[-1], e)
        self.attention = (Attention(ch[-1], config.attention_heads)
                          if config.attention_heads else None)
        for level in reversed(range(len(ch))):
            cout = ch[level]
            self.up.append(nn.ModuleList(
                [ResBlock((cin if i == 0 else cout) + cout, cout, e)
                 for i in range(config.blocks_per_level)]))
            cin = cout
        self.head = nn.Sequential(_norm(ch[0]), nn.SiLU(),
                                  nn.Conv2d(ch[0], config.out_channels * p2, 3, padding=1))

    def position_map(self, positions: Tensor | None, batch: int, size: tuple[int, int]) -> Tensor:
        """The learned map (B, P, H, W) at ``positions``: training-grid (row, column) indices
        (B, 2, H, W), or (2, H, W) shared by the batch, or None for the whole map."""
        assert self.position is not None
        if positions is None:
            if tuple(size) != tuple(self.position.shape[-2:]):
                raise ValueError(f"grid {tuple(size)} is not the training grid "
                                 f"{tuple(self.position.shape[-2:])} of the position map")
            return self.position[None].expand(batch, -1, -1, -1)
        if positions.dim() == 3:
            return self.position[:, positions[0], positions[1]][None].expand(batch, -1, -1, -1)
        return self.position[:, positions[:, 0], positions[:, 1]].transpose(0, 1)

    def forward(self, x: Tensor, c_noise: Tensor, positions: Tensor | None = None) -> Tensor:
        """x: (B, C_in, H, W), c_noise: (B,) -> (B, C_out, H, W).

        ``positions`` (B, 2, H, W) or (2, H, W) are the training-grid (row, column) of x's
        cells (a patch or a tile); None means the whole grid.
        """
        emb = self.embed(noise_embedding(c_noise, self.config.embedding))
        if self.position is not None:
            where = self.position_map(positions, len(x), x.shape[-2:])
            x = torch.cat([x, where.to(x.dtype)], dim=1)
        if self.stem.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)   # a GPU's tensor cores' layout
        p = self.config.patch
        h = self.stem(F.pixel_unshuffle(x, p) if p > 1 else x)
        skips = []
        for level, blocks in enumerate(self.down):
            if level > 0:
                h = F.avg_pool2d(h, 2)
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
        h = self.mid(h, emb)
        if self.attention is not None:
            h = self.attention(h)
        for level, blocks in enumerate(self.up):
            if level > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
        h = self.head(h)
        return F.pixel_shuffle(h, p) if p > 1 else h
