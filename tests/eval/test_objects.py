"""Counting the pieces of a ``shapes`` image against the generator's ground truth."""

import numpy as np
import pytest

from mmdit_jax.data.shapes import example
from mmdit_jax.eval.objects import one_object_rate, piece_counts


def test_piece_counts_equal_the_number_of_objects_drawn():
    single = np.stack([example(i, 3, 32)["image"] for i in range(60)])
    assert one_object_rate(single) == 1.0
    scenes = [example(i, 4, 64, max_objects=3) for i in range(60)]       # at 64 px crowded objects never touch
    counts = piece_counts(np.stack([e["image"] for e in scenes]))
    np.testing.assert_array_equal(counts, [e["num_objects"] for e in scenes])
    assert set(counts) == {1, 2, 3}


def test_a_split_object_is_two_pieces_and_a_speck_is_none():
    image = next(e["image"] for i in range(50) if (e := example(i, 5, 64))["size"] == 2)  # a large object
    ys, xs = np.nonzero(image.max(-1) > 64)
    split = image.copy()
    split[:, (xs.min() + xs.max()) // 2 - 1:(xs.min() + xs.max()) // 2 + 2] = 0    # a black cut through it
    speck = image.copy()
    row = 0 if ys.mean() > 32 else 62                                               # the half without the object
    speck[row:row + 2, 0:2] = 255                                                   # 4 px: below the min area
    assert piece_counts(np.stack([image, split, speck])).tolist() == [1, 2, 1]
    assert one_object_rate(np.stack([image, split])) == 0.5
    with pytest.raises(ValueError, match=r"images must be \(B, H, W, 3\)"):
        piece_counts(image)
