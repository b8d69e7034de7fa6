"""Generation fanned out over Ray actors (a local Ray instance) writes exactly what generating here writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.common.errors import MemoScopeError
from core.generative.sample import GenerateConfig, generate

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("sample_*.png"))}


def test_an_unreachable_cluster_is_a_clear_error(checkpoint_2d: Path, tmp_path: Path) -> None:
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    config = GenerateConfig.from_dict(
        {"checkpoint": str(checkpoint_2d), "n": 1, "steps": 1, "out": str(tmp_path / "g"), "ray": "ray://127.0.0.1:1"}
    )
    with pytest.raises(MemoScopeError, match="cannot reach a Ray cluster"):
        generate(config)


@pytest.mark.slow
def test_ray_workers_write_the_samples_generating_here_writes(
    local_ray: None, checkpoint_2d: Path, tmp_path: Path
) -> None:
    common = {"checkpoint": str(checkpoint_2d), "n": 5, "steps": 3, "seed": 11, "device": "cpu"}
    here = generate(GenerateConfig.from_dict({**common, "out": str(tmp_path / "here"), "batch_size": 5}))
    spread = generate(
        GenerateConfig.from_dict(
            {**common, "out": str(tmp_path / "ray"), "batch_size": 2, "ray": "local", "workers": 2}
        )
    )
    assert spread.n_written == here.n_written == 5 and spread.record["ray"] == "local"
    a, b = _pixels(tmp_path / "here"), _pixels(tmp_path / "ray")
    assert list(a) == list(b)
    # batches of 2 on two single-threaded workers: the same samples up to floating-point summation order
    worst = max(int(np.abs(a[k].astype(np.int64) - b[k].astype(np.int64)).max()) for k in a)
    assert worst <= 8, f"{worst}/65535"  # 16-bit PNGs: at most 8 levels (1e-4 of the range) apart
    assert (tmp_path / "ray" / "manifest.csv").read_text() == (tmp_path / "here" / "manifest.csv").read_text()


@pytest.mark.slow
def test_ray_workers_embed_as_the_detector_does_here(local_ray: None, tmp_path: Path) -> None:
    from core.detect.detector import Detector, DetectorConfig, build_encoder, embed, embed_on_ray, save_detector

    config = DetectorConfig.for_dims(2, [16, 16], arch="convres", embed_dim=8)
    torch.manual_seed(0)
    detector = Detector(config, build_encoder(config).eval())
    save_detector(detector, tmp_path / "detector")
    images = np.random.default_rng(0).uniform(-1, 1, (50, 1, 16, 16)).astype(np.float32)
    here = embed(detector.model, images)
    spread = embed_on_ray(tmp_path / "detector", images, "local", workers=2, chunk=16, device="cpu")
    assert spread.shape == here.shape == (50, 8)
    np.testing.assert_allclose(spread, here, atol=1e-5)  # chunks of 16 on two workers, back in order


@pytest.mark.slow
def test_ray_workers_verify_as_verification_here_does(local_ray: None) -> None:
    from core.detect.verify import pixel_descriptors, verify
    from core.io.sample_data import REAL_VOLUMES, axial_slices

    slices = axial_slices(next(v for v in REAL_VOLUMES if v.subject == "mni152"), 32, step=4)
    train, queries = slices[::2], slices[1::2]
    args = (pixel_descriptors(queries), pixel_descriptors(train), queries, train, 2)
    here = verify(*args, chunk=5)
    spread = verify(*args, chunk=5, ray="local", workers=2)
    np.testing.assert_array_equal(spread.neighbors.index, here.neighbors.index)
    np.testing.assert_allclose(spread.neighbors.similarity, here.neighbors.similarity, atol=1e-5)
    assert spread.alignments == here.alignments


@pytest.mark.slow
def test_search_shards_on_ray_merge_into_the_one_machine_neighbours(local_ray: None) -> None:
    from core.detect.search import SearchConfig, make_index, merge_top_k, search_sharded

    rng = np.random.default_rng(0)
    database = rng.normal(size=(1001, 16)).astype(np.float32)
    queries = rng.normal(size=(40, 16)).astype(np.float32)
    config = SearchConfig(k=5)
    here = make_index(database, config).search(queries)
    for shards in (2, 3):
        spread = search_sharded(queries, database, config, "local", shards)
        np.testing.assert_array_equal(spread.index, here.index)
        np.testing.assert_allclose(spread.similarity, here.similarity, atol=1e-6)
    # ties go to the lower row, as one search orders them
    tied = merge_top_k(
        [(np.array([[0.5, 0.1]], np.float32), np.array([[7, 8]])), (np.array([[0.5]], np.float32), np.array([[2]]))], 2
    )
    assert tied.index.tolist() == [[2, 7]]
