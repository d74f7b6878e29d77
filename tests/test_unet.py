"""The U-Net backbone: attention's global reach, the position map and its patches."""

import pytest
import torch

from ctxq_cli.unet import Attention, UNet, UNetConfig


def _net(**kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=2, out_channels=1, channels=(8, 16), **kwargs)).eval()


def test_attention_reaches_across_the_grid():
    torch.manual_seed(0)
    attention = Attention(16, heads=4)
    x = torch.randn(1, 16, 8, 8)
    y = x.clone()
    y[..., 0, 0] += 3.0
    far = (attention(y) - attention(x))[..., 7, 7]      # a cell 7 rows and columns away
    assert far.abs().max() > 1e-3
    conv = torch.nn.Conv2d(16, 16, 3, padding=1)        # the U-Net's blocks reach one cell
    assert (conv(y) - conv(x))[..., 7, 7].abs().max() == 0


def test_attention_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="heads"):
        _net(attention_heads=3)


def test_a_patch_looks_up_its_own_cells_of_the_position_map():
    net = _net(position_channels=3, grid=(16, 24))
    rows = torch.arange(4, 12)[:, None].expand(8, 8)
    cols = torch.arange(10, 18)[None, :].expand(8, 8)
    cells = torch.stack([rows, cols])[None]                  # (1, 2, 8, 8)
    patch = net.position_map(cells, 1, (8, 8))
    torch.testing.assert_close(patch[0], net.position[:, 4:12, 10:18])
    whole = net.position_map(None, 2, (16, 24))
    assert whole.shape == (2, 3, 16, 24)
    with pytest.raises(ValueError, match="training grid"):
        net.position_map(None, 1, (16, 16))


def test_a_patch_trains_only_the_cells_it_covers():
    net = _net(position_channels=2, grid=(16, 16)).train()
    rows = torch.arange(8)[:, None].expand(8, 8)
    cells = torch.stack([rows, rows.T])[None]                # the top-left 8×8
    net(torch.randn(1, 2, 8, 8), torch.zeros(1), cells).pow(2).sum().backward()
    grad = net.position.grad.abs().sum(dim=0)
    assert grad[:8, :8].sum() > 0
    assert grad[8:].sum() == 0 and grad[:, 8:].sum() == 0
