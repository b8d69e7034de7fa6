"""The approximate index meets its recall target by measurement, or answers exactly and says so."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core.common.errors import MemoScopeError
from core.detect.search import (
    Approximate,
    ApproximateIndex,
    ExactIndex,
    HNSWIndex,
    IVFIndex,
    SearchConfig,
    agreement,
    brute_force,
    make_index,
    pearson_normalize,
    recall_at_1,
    sample_rows,
    search_all,
)

# the index is approximate above 2,000 rows here (10 million in use), its recall measured on 300 queries
SMALL: dict[str, Any] = {"approximate_above": 2000, "calibration_sample": 300}


def _patients(rng: np.random.Generator, n: int, queries: int, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Clustered embeddings as a detector gives them: patients' slices along a smooth path in a low-dimensional
    latent space (neighbouring slices correlated), mapped to ``d`` dimensions, plus noise; the queries are a fifth
    near-copies of database rows and the rest slices of new patients."""
    latent, slices = 8, 20
    basis = rng.normal(size=(latent, d))

    def paths(count: int) -> np.ndarray:
        steps = np.cumsum(0.1 * rng.normal(size=(count, slices, latent)), axis=1)
        return (rng.normal(size=(count, 1, latent)) + steps).reshape(-1, latent)

    z = paths(n // slices + 1)[:n]
    copies = z[rng.choice(n, queries // 5, replace=False)] + 0.02 * rng.normal(size=(queries // 5, latent))
    zq = np.concatenate([copies, paths(queries // slices + 1)[: queries - len(copies)]])
    embed = lambda v: (v @ basis + 0.3 * rng.normal(size=(len(v), d))).astype(np.float32)  # noqa: E731
    return embed(z), embed(zq)


def _random(rng: np.random.Generator, n: int, queries: int, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian vectors: no structure at all, the hardest case for an approximate index."""
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(queries, d)).astype(np.float32)


def _recall_on(found: np.ndarray, database: np.ndarray, queries: np.ndarray) -> float:
    """Recall@1 of the top rows ``found`` for ``queries`` against the numpy brute force."""
    exact = brute_force(queries, database, 1)
    best = np.einsum("ij,ij->i", pearson_normalize(queries), pearson_normalize(database[found]))
    return float(((found == exact.index[:, 0]) | np.isclose(best, exact.best, atol=1e-5)).mean())


@pytest.mark.parametrize("data", [_patients, _random], ids=["clustered", "random"])
@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_the_recall_target_is_met_by_widening_and_recorded(data: Any, method: str) -> None:
    rng = np.random.default_rng(7)
    database, queries = data(rng, 3000, 900)
    # start narrow so the target is out of reach at first: the calibration has to widen the search (with no cap on
    # the cells: random data needs more than the default quarter of them at this size)
    config = SearchConfig(k=3, approximate=Approximate(method), nprobe=1, max_scan=1.0, ef_search=1, hnsw_m=8, **SMALL)
    index = make_index(database, config)
    assert isinstance(index, IVFIndex if method == "ivf" else HNSWIndex)
    first = index.breadth
    assert recall_at_1(index, database, queries, sample=300).recall_at_1 < 0.99  # too narrow as built
    found = index.search(queries)
    report = index.report
    assert not index.fell_back and index.breadth > first
    assert report.index == index.kind and report.index.startswith(f"approximate (faiss {method.upper()}, ")
    assert report.recall_at_1 >= 0.99 and report.sample == 300 and report.database == 3000
    # the recorded recall is what the answers returned score against numpy brute force on the same sample
    rows = sample_rows(len(queries), 300, 0)
    assert _recall_on(found.index[rows, 0], database, queries[rows]) == pytest.approx(report.recall_at_1)
    # and it holds beyond the sample (a few misses more at most)
    assert _recall_on(found.index[:, 0], database, queries) >= 0.97
    exact = ExactIndex(database, config).search(queries)
    _, shortfall = agreement(found, exact)
    assert report.max_shortfall <= shortfall + 1e-6


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_an_unreachable_target_falls_back_to_exact_search_and_says_so(method: str) -> None:
    rng = np.random.default_rng(8)
    database, queries = _random(rng, 3000, 600)
    # recall 1.0 within a tiny cap: 3 of 76 cells, or a graph searched at most 4 wide
    config = SearchConfig(
        k=4,
        approximate=Approximate(method),
        target_recall=1.0,
        max_scan=0.03,
        ef_search=2,
        max_ef_search=4,
        hnsw_m=4,
        **SMALL,
    )
    index = make_index(database, config)
    assert isinstance(index, ApproximateIndex)
    found = index.search(queries)
    assert index.fell_back.startswith(f"{method.upper()} reached recall@1 0.")
    assert index.kind.startswith("exact (faiss flat; ") and "its cap" in index.kind
    report = index.report
    assert report.index == index.kind and report.recall_at_1 == 1.0 and report.sample == 0
    ref = brute_force(queries, database, 4)
    np.testing.assert_array_equal(found.index, ref.index)
    np.testing.assert_allclose(found.similarity, ref.similarity, atol=1e-5)
    # later query sets are exact too, without calibrating again
    index.search(queries[::-1])
    assert recall_at_1(index, database, queries).sample == 0 and len(index.searches) == 2


def test_a_query_set_within_the_calibration_sample_is_searched_exactly() -> None:
    rng = np.random.default_rng(9)
    database, queries = _random(rng, 3000, 300)
    index = make_index(database, SearchConfig(k=2, **SMALL))
    assert isinstance(index, IVFIndex)
    found = index.search(queries)
    np.testing.assert_array_equal(found.index, brute_force(queries, database, 2).index)
    report = index.report
    assert report.index == "exact (faiss flat; all 300 queries within the calibration sample)"
    assert report.recall_at_1 == 1.0 and report.sample == 0


def test_breadth_only_grows_and_the_report_keeps_the_worst_query_set() -> None:
    rng = np.random.default_rng(10)
    database, easy = _patients(rng, 3000, 600)
    hard = rng.normal(size=(600, 32)).astype(np.float32)
    index = make_index(database, SearchConfig(k=1, nprobe=1, **SMALL))
    assert isinstance(index, IVFIndex)
    index.search(easy)
    after_easy = index.breadth
    index.search(hard)
    assert index.breadth >= after_easy and len(index.searches) == 2
    recalls = [r.recall_at_1 for r in index.searches]
    assert min(recalls) >= 0.99 and index.report.recall_at_1 == min(recalls)
    if index.searches[0].index != index.searches[1].index:  # widened: both settings are named, in order
        assert index.report.index == f"{index.searches[0].index}, then {index.searches[1].index}"


def test_search_all_records_the_training_index_calibration() -> None:
    rng = np.random.default_rng(11)
    train, synthetic = _patients(rng, 3000, 500)
    val = _patients(rng, 400, 400)[0]
    tables = search_all(train, val, synthetic, SearchConfig(k=2, **SMALL))
    assert tables.search is not None and tables.search.index.startswith("approximate (faiss IVF, ")
    assert tables.search.recall_at_1 >= 0.99 and tables.search.sample == 300
    assert _recall_on(tables.synthetic_to_train.index[:, 0], train, synthetic) >= 0.97


def test_the_target_and_caps_are_validated() -> None:
    for bad in ({"target_recall": 1.5}, {"max_scan": -1.0}, {"calibration_sample": 0}, {"nprobe": 0}):
        with pytest.raises(MemoScopeError):
            SearchConfig(**bad)  # type: ignore[arg-type]
    assert SearchConfig.from_dict({"approximate": "hnsw"}).approximate == "hnsw"
