"""The on-disk layout of a variable and its inverse."""

import numpy as np

from ctxq_cli import layout


def test_layout_round_trip_for_every_order_of_three_dims():
    rng = np.random.default_rng(1)
    for axis in range(3):
        internal = rng.random((4, 5, 6)).astype(np.float32)
        disk_shape = list((5, 6))
        disk_shape.insert(axis, 4)
        disk = layout.to_disk(internal, (1, *disk_shape), axis + 1)   # with a singleton dim
        assert layout.to_internal(disk, axis + 1).tobytes() == internal.tobytes()
