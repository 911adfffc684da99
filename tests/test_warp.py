"""The on-device SiPaKMeD augmentation reproduces OpenCV's getRotationMatrix2D + warpAffine.

OpenCV is not a dependency, so the reference is (a) its documented matrix formula, worked out by
hand below, (b) geometric facts a reader can check on paper (90 degrees counter-clockwise on a
screen whose y axis points down), and (c) a naive per-pixel numpy loop written straight from
warpAffine's definition: dst(p) = src(M^-1 p), bilinear, neighbours outside the image = 0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from coordchannels.sipakmed.warp import (
    affine_matrices,
    invert_affine,
    table_params,
    variant_params,
    variant_table,
    warp_images,
    warp_points,
)


def params(*rows) -> torch.Tensor:
    """Rows of (tx, ty, angle_deg, scale) as a float64 tensor."""
    return torch.tensor(rows, dtype=torch.float64)


def one_pixel(h: int, w: int, x: int, y: int) -> torch.Tensor:
    img = torch.zeros(1, 1, h, w)
    img[0, 0, y, x] = 1.0
    return img


def reference_warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """cv2.warpAffine(image, M, (w, h), INTER_LINEAR, BORDER_CONSTANT 0) by its definition."""
    c, h, w = image.shape
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    out = np.zeros_like(image, dtype=np.float64)

    def pixel(xi: int, yi: int) -> np.ndarray:
        inside = 0 <= xi < w and 0 <= yi < h
        return image[:, yi, xi] if inside else np.zeros(c)

    for y in range(h):
        for x in range(w):
            sx, sy, _ = inv @ [x, y, 1.0]
            x0, y0 = math.floor(sx), math.floor(sy)
            fx, fy = sx - x0, sy - y0
            out[:, y, x] = (
                (1 - fx) * (1 - fy) * pixel(x0, y0)
                + fx * (1 - fy) * pixel(x0 + 1, y0)
                + (1 - fx) * fy * pixel(x0, y0 + 1)
                + fx * fy * pixel(x0 + 1, y0 + 1)
            )
    return out


# ---------------------------------------------------------------------------------------------
# Matrices


def test_matrix_equals_opencv_formula_worked_by_hand():
    # angle 90, scale 1, 256 x 256: alpha = 0, beta = 1, centre (128, 128):
    # [[0, 1, (1-0)*128 - 1*128 = 0], [-1, 0, 1*128 + (1-0)*128 = 256]]
    m = affine_matrices(params((0, 0, 90, 1)), 256)[0]
    torch.testing.assert_close(m, torch.tensor([[0.0, 1, 0], [-1, 0, 256]], dtype=torch.float64))

    # angle 30, scale 0.5, h = 100, w = 61: centre (61 // 2, 100 // 2) = (30, 50);
    # alpha = 0.5 cos 30 = 0.4330127019, beta = 0.5 sin 30 = 0.25;
    # t0 = 0.5669872981 * 30 - 0.25 * 50 = 4.5096189432; t1 = 0.25 * 30 + 0.5669872981 * 50 = 35.8493649054
    # then (tx, ty) = (3, -7) is added to the last column.
    m = affine_matrices(params((3, -7, 30, 0.5)), (100, 61))[0]
    expected = torch.tensor(
        [[0.4330127019, 0.25, 4.5096189432 + 3], [-0.25, 0.4330127019, 35.8493649054 - 7]], dtype=torch.float64
    )
    torch.testing.assert_close(m, expected, atol=1e-9, rtol=0)

    # angle -45, scale 1.25, 9 x 9: centre (4, 4); alpha = 1.25 / sqrt 2 = 0.8838834765,
    # beta = -0.8838834765; t0 = 0.1161165235 * 4 + 0.8838834765 * 4 = 4.0;
    # t1 = -0.8838834765 * 4 + 0.1161165235 * 4 = -3.0710678119
    m = affine_matrices(params((0, 0, -45, 1.25)), 9)[0]
    expected = torch.tensor(
        [[0.8838834765, -0.8838834765, 4.0], [0.8838834765, 0.8838834765, -3.0710678119]], dtype=torch.float64
    )
    torch.testing.assert_close(m, expected, atol=1e-9, rtol=0)


def test_positive_angle_turns_counter_clockwise_on_screen():
    # 9 x 9 image, centre (4, 4); y points down, so "up" on screen is smaller y.
    m = affine_matrices(params((0, 0, 90, 1)), 9)
    pts = torch.tensor([[[8.0, 4.0], [4.0, 0.0], [4.0, 4.0]]], dtype=torch.float64)
    moved = warp_points(pts, m)[0]
    # right of centre -> above it; above -> left of it (counter-clockwise); the centre stays.
    torch.testing.assert_close(moved, torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 4.0]], dtype=torch.float64))


def test_scale_and_translation_about_the_centre():
    m = affine_matrices(params((2, -3, 0, 2.0)), (8, 10))  # centre (5, 4)
    moved = warp_points(torch.tensor([[[5.0, 4.0], [6.0, 4.0], [5.0, 2.0]]]), m)[0]
    # centre -> centre + (tx, ty); distances from it double.
    torch.testing.assert_close(moved, torch.tensor([[7.0, 1.0], [9.0, 1.0], [7.0, -3.0]]))


def test_invert_affine_round_trips_points():
    m = affine_matrices(torch.from_numpy(variant_params(3, 2, seed=1)), 256)
    pts = torch.rand(6, 5, 7, 2, dtype=torch.float64) * 255
    back = warp_points(warp_points(pts, m), invert_affine(m))
    torch.testing.assert_close(back, pts)
    assert warp_points(pts.float(), m).dtype == torch.float32


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        affine_matrices(torch.zeros(3, 3))
    m = affine_matrices(params((0, 0, 0, 1)), 8)
    with pytest.raises(ValueError, match="one per item"):
        warp_images(torch.zeros(2, 1, 8, 8), m)
    with pytest.raises(ValueError, match="singular"):
        warp_images(torch.zeros(1, 1, 8, 8), affine_matrices(params((0, 0, 0, 0.0)), 8))


# ---------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize(
    "p, h, w",
    [
        ((3, -2, 0, 1), 16, 16),  # translation
        ((0, 0, 90, 1), 16, 16),  # quarter turns about the centre (8, 8)
        ((0, 0, 180, 1), 16, 16),
        ((0, 0, -90, 1), 16, 16),
        ((1, 2, 90, 1), 8, 16),  # non-square: centre (w // 2, h // 2) = (8, 4)
    ],
)
def test_bright_pixel_lands_exactly_on_warped_point(p, h, w):
    x, y = 9, 3
    m = affine_matrices(params(p), (h, w))
    tx, ty = warp_points(torch.tensor([[[float(x), float(y)]]], dtype=torch.float64), m)[0, 0]
    tx, ty = round(tx.item()), round(ty.item())
    out = warp_images(one_pixel(h, w, x, y), m)
    expected = torch.zeros(1, 1, h, w)
    expected[0, 0, ty, tx] = 1.0
    assert torch.equal(out, expected)


def test_quarter_turn_by_hand():
    # 90 degrees about (8, 8): (x, y) -> (y + cx - cy, -x + cx + cy) = (y, 16 - x).
    out = warp_images(one_pixel(16, 16, x=5, y=3), affine_matrices(params((0, 0, 90, 1)), 16))
    assert out[0, 0, 11, 3] == 1.0 and out.sum() == 1.0


def test_identity_returns_the_image():
    # bit-exact for power-of-two sides (every normalisation step is exact in float32) ...
    img = torch.rand(2, 3, 16, 32)
    m = affine_matrices(params((0, 0, 0, 1), (0, 0, 0, 1)), (16, 32))
    assert torch.equal(warp_images(img, m), img)
    # ... and to float32 rounding otherwise
    img = torch.rand(2, 3, 12, 20)
    m = affine_matrices(params((0, 0, 0, 1), (0, 0, 0, 1)), (12, 20))
    torch.testing.assert_close(warp_images(img, m), img, atol=1e-5, rtol=0)


def test_outside_is_filled_with_zero():
    img = torch.ones(1, 2, 16, 16)
    out = warp_images(img, affine_matrices(params((5, 0, 0, 1)), 16))
    assert torch.equal(out[..., :5], torch.zeros(1, 2, 16, 5))
    assert torch.equal(out[..., 5:], torch.ones(1, 2, 16, 11))
    gone = warp_images(img, affine_matrices(params((40, 0, 0, 1)), 16))
    assert torch.equal(gone, torch.zeros_like(img))


def test_half_pixel_shift_blends_neighbours_and_the_zero_border():
    # Pixel centres at integers: output x reads input x - 0.5, i.e. the mean of x - 1 and x,
    # and column 0 reads half of column 0 and half of the zero outside.
    img = torch.arange(1.0, 9.0).reshape(1, 1, 1, 8).expand(1, 1, 4, 8).contiguous()
    out = warp_images(img, affine_matrices(params((0.5, 0, 0, 1)), (4, 8)))
    row = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5])
    torch.testing.assert_close(out[0, 0], row.expand(4, 8))


def test_matches_naive_warp_affine_for_random_maps():
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(3, 2, 20, 24, generator=gen, dtype=torch.float64)
    p = torch.from_numpy(variant_params(3, 1, seed=7, max_shift=4.0, max_angle=40.0))
    m = affine_matrices(p, (20, 24))
    got = warp_images(img.float(), m)
    for i in range(3):
        ref = reference_warp(img[i].numpy(), m[i].numpy())
        np.testing.assert_allclose(got[i].numpy(), ref, atol=2e-5, rtol=0)


def test_blob_centre_follows_warp_points():
    # A smooth blob's intensity centroid moves exactly as the point map says (bilinear
    # sampling of a smooth image preserves its centroid to well under 0.05 px).
    h = w = 64
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cx, cy = 27.3, 35.8
    blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 3.0**2))[None, None]
    m = affine_matrices(params((4.2, -6.7, 17.0, 1.2)), 64)
    out = warp_images(blob, m)[0, 0]
    centroid = torch.stack([(out * xs).sum(), (out * ys).sum()]) / out.sum()
    expected = warp_points(torch.tensor([[[cx, cy]]], dtype=torch.float64), m)[0, 0]
    torch.testing.assert_close(centroid, expected, atol=0.05, rtol=0)


def test_batched_equals_one_at_a_time():
    img = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    m = affine_matrices(torch.from_numpy(variant_params(5, 1, seed=3)), 32)
    together = warp_images(img, m)
    alone = torch.cat([warp_images(img[i : i + 1], m[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def test_dtypes_and_channels_last():
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    m = affine_matrices(torch.from_numpy(variant_params(2, 1, seed=5)), 16)
    out = warp_images(img, m)
    assert out.dtype == torch.float32
    cl = warp_images(img.float().contiguous(memory_format=torch.channels_last), m)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out)
    assert warp_images(img.double(), m).dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Parameters


def test_variant_params_ranges_and_determinism():
    p = variant_params(50, 20, seed=42)
    assert p.shape == (1000, 4) and p.dtype == np.float64
    assert np.abs(p[:, :2]).max() <= 20 and np.abs(p[:, 2]).max() <= 20
    assert p[:, 3].min() >= 0.75 and p[:, 3].max() <= 1.25
    # spread over the whole range, not a constant
    assert p[:, 0].min() < -18 and p[:, 0].max() > 18 and p[:, 3].std() > 0.1
    np.testing.assert_array_equal(p, variant_params(50, 20, seed=42))
    assert not np.allclose(p, variant_params(50, 20, seed=43))


def test_variant_params_rows_depend_only_on_image_variant_and_seed():
    small = variant_params(3, 20, seed=42)
    np.testing.assert_array_equal(variant_params(10, 20, seed=42)[:60], small)
    # more variants extend each image's list without changing the first ones
    more = variant_params(3, 25, seed=42).reshape(3, 25, 4)
    np.testing.assert_array_equal(more[:, :20].reshape(60, 4), small)
    # images are independent streams: image 1's rows differ from image 0's
    assert not np.allclose(small[:20], small[20:40])


def test_variant_params_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_variants"):
        variant_params(2, 0)
    with pytest.raises(ValueError, match="scale"):
        variant_params(2, 3, scale=(1.5, 1.0))


def test_variant_table_round_trip_and_checks():
    table = variant_table(4, 3, seed=9)
    assert list(table.columns) == ["image", "variant", "tx", "ty", "angle_deg", "scale"]
    assert table["image"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert table["variant"].tolist() == [0, 1, 2] * 4
    np.testing.assert_array_equal(table_params(table), variant_params(4, 3, seed=9))
    with pytest.raises(ValueError, match="cache.csv: missing columns"):
        table_params(table.drop(columns="scale"), source="cache.csv")
    with pytest.raises(ValueError, match="sorted"):
        table_params(table.iloc[::-1].reset_index(drop=True))
    bad = table.copy()
    bad.loc[2, "tx"] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        table_params(pd.DataFrame(bad))
