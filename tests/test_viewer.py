"""Viewer arithmetic: windowing in float, overlays, planes, lossless encodings."""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from core.io.viewer import (
    CROSSHAIR,
    CT_PRESETS,
    PLANES,
    Window,
    apply_window,
    checkerboard,
    crosshair_at,
    difference,
    difference_bar,
    difference_limit,
    flicker_gif,
    gallery,
    orthogonal_slice,
    percentile_window,
    plane_size,
    png_bytes,
    with_crosshair,
)


def test_ct_window_maps_hu_exactly() -> None:
    width, level = CT_PRESETS["soft tissue"]
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    assert apply_window(hu, Window(width, level)).tolist() == [[0, 0, 128, 255, 255]]


def test_16_bit_values_are_not_down_cast_before_windowing() -> None:
    # two 16-bit values 3 apart become 3 grey levels apart under a 255-wide window
    image = np.array([[40000, 40003]], dtype=np.uint16)
    out = apply_window(image, Window(255.0, 40001.5))
    assert int(out[0, 1]) - int(out[0, 0]) == 3


def test_percentile_window_is_shared_by_both_images() -> None:
    a, b = np.zeros((4, 4)), np.full((4, 4), 10.0)
    window = percentile_window([a, b], 0, 100)
    assert (window.low, window.high) == (0.0, 10.0)
    assert apply_window(a, window).max() == 0 and apply_window(b, window).min() == 255


def test_difference_and_checkerboard() -> None:
    a, b = np.ones((8, 8)), np.zeros((8, 8))
    brighter, darker, same = difference(a, b, 1.0)[0, 0], difference(b, a, 1.0)[0, 0], difference(a, a, 1.0)[0, 0]
    assert brighter[0] > 3 * brighter[2] and darker[2] > 3 * darker[0]  # red above zero, blue below
    assert same.min() >= 240  # white at zero
    # a fixed scale: a small difference stays pale instead of being stretched to the full colour
    faint = difference(a * 0.01, b, 1.0)[0, 0]
    assert faint.min() >= 230 and np.array_equal(difference(a * 5, b, 1.0)[0, 0], brighter)
    bar = difference_bar(101, 4)
    assert bar.shape == (4, 101, 3) and np.array_equal(bar[0, 0], darker) and np.array_equal(bar[0, -1], brighter)
    assert difference_limit(Window(2.0, 0.0)) == 1.0
    wa, wb = np.full((8, 8), 200, np.uint8), np.full((8, 8), 10, np.uint8)
    board = checkerboard(wa, wb, tiles=2)
    assert board[0, 0] == 200 and board[0, 7] == 10 and board[7, 7] == 200
    with pytest.raises(ValueError):
        checkerboard(wa, wb[:4])


def test_orthogonal_planes() -> None:
    volume = np.arange(4 * 5 * 6, dtype=float).reshape(4, 5, 6)
    assert orthogonal_slice(volume, "axial", 2).shape == (5, 4)
    assert orthogonal_slice(volume, "coronal", 1).shape == (6, 4)
    assert orthogonal_slice(volume, "sagittal", 3).shape == (6, 5)
    assert [plane_size(volume.shape, p) for p in ("axial", "coronal", "sagittal")] == [6, 5, 4]
    with pytest.raises(ValueError):
        orthogonal_slice(volume, "oblique", 0)


def test_png_is_lossless_and_gif_has_two_frames() -> None:
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(np.array(Image.open(io.BytesIO(png_bytes(image)))), image)
    assert np.array(Image.open(io.BytesIO(png_bytes(image, 3)))).shape == (48, 48)
    gif = Image.open(io.BytesIO(flicker_gif(image, 255 - image)))
    assert gif.n_frames == 2


def test_the_crosshair_of_each_plane_passes_through_the_voxel_the_other_planes_cut() -> None:
    volume = np.zeros((7, 9, 11))
    x, y, z = 2, 6, 3
    volume[x, y, z] = 1.0
    position = {"sagittal": x, "coronal": y, "axial": z}
    for plane in PLANES:
        shown = orthogonal_slice(volume, plane, position[plane])
        row, col = crosshair_at(volume.shape, plane, position)
        assert shown[row, col] == 1.0, plane
        drawn = with_crosshair(np.zeros(shown.shape, np.uint8), row, col, scale=3)
        assert drawn.shape == (shown.shape[0] * 3, shown.shape[1] * 3, 3)
        assert (
            drawn[row * 3 + 1, 0].tolist() == CROSSHAIR.tolist()
            and drawn[0, col * 3 + 1].tolist() == CROSSHAIR.tolist()
        )
        assert drawn[row * 3, 0].tolist() == [0, 0, 0]  # one pixel thin


def test_gallery_windows_the_first_images_and_shows_the_middle_plane_of_a_volume(tmp_path: Path) -> None:
    assert gallery(tmp_path / "missing").total == 0
    assert gallery(tmp_path).total == 0  # an empty folder: nothing generated yet
    volume = np.zeros((8, 8, 6), np.float32)
    volume[:, :, 3] = np.arange(64, dtype=np.float32).reshape(8, 8)  # only the middle axial plane has contrast
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "a.nii.gz"))
    for name in ("b.png", "c.png"):
        Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).save(tmp_path / name)
    shown = gallery(tmp_path, limit=2)
    assert shown.total == 3 and [name for name, _ in shown.thumbnails] == ["a.nii.gz", "b.png"]
    middle = np.asarray(Image.open(io.BytesIO(shown.thumbnails[0][1])))
    assert middle.shape == (8, 8) and middle.min() == 0 and middle.max() == 255  # windowed 1-99 %, not blank
    assert np.asarray(Image.open(io.BytesIO(shown.thumbnails[1][1]))).shape == (16, 16)
