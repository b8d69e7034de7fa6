"""Exact Pearson search equals a numpy brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from core.detect.search import SearchConfig, brute_force, pearson_normalize, search, search_all


def test_pearson_normalize_gives_correlation() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 16))
    x = pearson_normalize(np.stack([a, b]))
    assert float(x[0] @ x[1]) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_faiss_equals_brute_force(chunk: int) -> None:
    rng = np.random.default_rng(1)
    db, q = rng.normal(size=(300, 32)), rng.normal(size=(50, 32))
    got = search(q, db, SearchConfig(k=5, chunk_size=chunk))
    ref = brute_force(q, db, 5)
    np.testing.assert_array_equal(got.index, ref.index)
    np.testing.assert_allclose(got.similarity, ref.similarity, atol=1e-5)


def test_exact_copy_is_found_with_correlation_one_and_scale_invariance() -> None:
    rng = np.random.default_rng(2)
    db = rng.normal(size=(100, 8))
    nn = search(3.0 * db[[17, 42]] + 5.0, db, SearchConfig(k=1))
    assert nn.index[:, 0].tolist() == [17, 42]
    np.testing.assert_allclose(nn.best, 1.0, atol=1e-5)


def test_four_directions_shapes() -> None:
    rng = np.random.default_rng(3)
    t = search_all(rng.normal(size=(20, 4)), rng.normal(size=(10, 4)), rng.normal(size=(30, 4)), SearchConfig(k=3))
    assert t.synthetic_to_train.index.shape == (30, 3) and t.train_to_synthetic.index.shape == (20, 3)
    assert t.train_to_val.index.shape == (20, 3) and t.val_to_train.index.shape == (10, 3)
