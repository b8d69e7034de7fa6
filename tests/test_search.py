"""Exact Pearson search equals a numpy brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from core.detect.search import (
    ExactIndex,
    HNSWIndex,
    IVFIndex,
    SearchConfig,
    TorchIndex,
    brute_force,
    make_index,
    pearson_normalize,
    recall_at_1,
    search,
    search_all,
    search_report,
)


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


def _clustered(rng: np.random.Generator, n: int, d: int = 32, clusters: int = 50) -> np.ndarray:
    centres = rng.normal(size=(clusters, d))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_torch_search_equals_faiss_exact_search() -> None:
    rng = np.random.default_rng(0)
    database, queries = _clustered(rng, 500), _clustered(rng, 77)
    exact = ExactIndex(database, SearchConfig(k=5, chunk_size=16)).search(queries)
    torch_index = TorchIndex(database, SearchConfig(k=5, chunk_size=16, device="cpu"))
    found = torch_index.search(queries)
    np.testing.assert_array_equal(found.index, exact.index)
    np.testing.assert_allclose(found.similarity, exact.similarity, atol=1e-5)


def test_an_approximate_index_past_the_threshold_records_its_measured_recall() -> None:
    rng = np.random.default_rng(1)
    database, queries = _clustered(rng, 3000), _clustered(rng, 400)
    # queries from other clusters than the database's: the IVF cells may reach half the database (default: a quarter)
    config = SearchConfig(k=3, approximate_above=1000, calibration_sample=200, max_scan=0.5)
    index = make_index(database, config)
    assert isinstance(index, IVFIndex) and type(make_index(database[:1000], config)) is ExactIndex
    index.search(queries)
    report = search_report(index)
    assert report.index.startswith("approximate (faiss IVF") and report.sample == 200 and report.database == 3000
    assert report.recall_at_1 >= 0.99
    # measured afresh on the same seeded sample, against an exact index of its own: the same record
    assert recall_at_1(index, database, queries, sample=200) == report
    # a starved graph is measured as such, not reported as exact
    weak = HNSWIndex(database, SearchConfig(k=1, hnsw_m=2, ef_search=1))
    starved = recall_at_1(weak, database, queries, sample=200)
    assert starved.index.startswith("approximate (faiss HNSW, M 2, ef 1)")
    assert starved.recall_at_1 < report.recall_at_1 and starved.max_shortfall > report.max_shortfall
    exact = recall_at_1(make_index(database[:1000], config), database[:1000], queries)
    assert exact.recall_at_1 == 1.0 and exact.sample == 0 and exact.index == "exact (faiss flat)"
