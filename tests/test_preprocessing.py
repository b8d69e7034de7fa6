"""Preprocessing: sizes, intensity rules, and the errors users can hit."""

from __future__ import annotations

import numpy as np
import pytest

from core.common.errors import MemoScopeError
from core.io.preprocessing import PreprocessSpec, preprocess


@pytest.mark.parametrize("size", [(16, 16), (8, 8, 8)])
@pytest.mark.parametrize("mode", ["resize", "crop_pad"])
def test_output_shape_range_dtype(size: tuple[int, ...], mode: str) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4000, size=(1, *(s + 5 for s in size))).astype(np.uint16)
    out = preprocess(raw, PreprocessSpec(size, resize=mode))  # type: ignore[arg-type]
    assert out.shape == (1, *size) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_minmax_maps_extremes_to_minus_one_and_one() -> None:
    raw = np.arange(64, dtype=np.int16).reshape(1, 8, 8) - 20
    out = preprocess(raw, PreprocessSpec((8, 8), resize="crop_pad"))
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)


def test_ct_window_is_in_hounsfield_units_and_clips() -> None:
    raw = np.array([[-2000, -1000, 0, 1000, 3000]] * 5, dtype=np.int16)[None]
    out = preprocess(raw, PreprocessSpec((5, 5), resize="crop_pad", intensity="ct", ct_window=(-1000, 1000)))
    np.testing.assert_allclose(out[0, 0], [-1, -1, 0, 1, 1], atol=1e-6)


def test_round_trip_through_dict() -> None:
    spec = PreprocessSpec((32, 32, 32), intensity="percentile", percentiles=(2, 98))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spatial_size": (2, 2)},
        {"spatial_size": (8, 8), "percentiles": (50, 10)},
        {"spatial_size": (8, 8), "intensity": "zscore"},
    ],
)
def test_bad_spec_is_refused(kwargs: dict) -> None:
    with pytest.raises(MemoScopeError):
        PreprocessSpec(**kwargs)


@pytest.mark.slow
def test_the_demo_cubes_do_not_depend_on_the_torch_thread_count() -> None:
    """MONAI's anti-aliased resize of a large volume rounds differently with 1 and 2 threads; the demo data (and
    any loaded set) are made at one thread, so a 1-core machine rebuilds them byte for byte."""
    import torch

    from core.io.sample_data import REAL_VOLUMES, volume_cube

    threads = torch.get_num_threads()
    mni152 = next(v for v in REAL_VOLUMES if v.subject == "mni152")  # 193x229x193 -> 32^3: the case that differed
    try:
        cubes = []
        for n in (1, 2):
            torch.set_num_threads(n)
            cubes.append(volume_cube(mni152))
            assert torch.get_num_threads() == n  # the caller's setting is restored
    finally:
        torch.set_num_threads(threads)
    assert cubes[0].tobytes() == cubes[1].tobytes()
