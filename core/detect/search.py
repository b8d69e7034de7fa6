"""Nearest-neighbour search by Pearson correlation between embeddings.

Exact by default: faiss ``IndexFlatIP`` on the CPU, or a chunked matrix product with top-k in torch on a GPU.
Above ``approximate_above`` database rows an HNSW graph (faiss ``IndexHNSWFlat``) answers instead; its
recall@1 against exact search is measured on a sample of the queries and recorded with the results
(:func:`recall_at_1`), so an approximate answer is never silently taken for an exact one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from core.common.config import Config

if TYPE_CHECKING:  # faiss and torch load with the first index, not with the results' types
    import faiss


@dataclass(frozen=True)
class SearchConfig(Config):
    """How to search: ``k`` neighbours, queries processed ``chunk_size`` at a time.

    Attributes:
        approximate_above: database rows above which an HNSW index replaces exact search.
        hnsw_m, ef_search: the HNSW graph's links per node and its search breadth (recall grows with both).
        device: ``cuda[:i]`` searches exactly with torch on that GPU; anything else uses faiss on the CPU.
    """

    k: int = 5
    chunk_size: int = 4096
    approximate_above: int = 1_000_000
    hnsw_m: int = 32
    ef_search: int = 256
    device: str = "cpu"


@dataclass(frozen=True)
class Neighbors:
    """Top-k neighbours of each query.

    Attributes:
        similarity: ``(Q, k)`` float32 Pearson correlations, best first.
        index: ``(Q, k)`` int64 rows of the database.
    """

    similarity: npt.NDArray[np.float32]
    index: npt.NDArray[np.int64]

    @property
    def best(self) -> npt.NDArray[np.float32]:
        """``(Q,)`` correlation to the nearest database item."""
        return self.similarity[:, 0]


def pearson_normalize(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Centre each row and scale it to unit length, so inner product = Pearson correlation.

    Args:
        vectors: ``(N, D)`` embeddings.

    Returns:
        ``(N, D)`` float32; a constant row becomes all zeros (correlation 0 with anything).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {x.shape}")
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0).astype(np.float32)


class ExactIndex:
    """An exact inner-product index over Pearson-normalised vectors.

    faiss ``IndexFlatIP`` is thread-safe for search; queries are chunked so that the
    ``(chunk, N)`` score block bounds memory.
    """

    kind = "exact (faiss flat)"

    def __init__(self, database: npt.ArrayLike, config: SearchConfig | None = None) -> None:
        self.config = config or SearchConfig()
        data = pearson_normalize(database)
        self.size, self.dim = data.shape
        self._index = self._build(self.dim)
        self._index.add(data)

    def _build(self, dim: int) -> faiss.Index:
        import faiss

        # faiss scores fewer than 128,000 / d queries per call with a loop of dot products instead of its blocked
        # matrix product: 8 GFLOP/s against 94 on this project's 2-core machine, so 512 queries against 200,000
        # training embeddings took 3.3 s instead of 0.28 s. The matrix product is as fast at every size here.
        faiss.cvar.distance_compute_blas_threshold = 0
        return faiss.IndexFlatIP(dim)

    def search(self, queries: npt.ArrayLike, k: int | None = None) -> Neighbors:
        k = min(k or self.config.k, self.size)
        q = pearson_normalize(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
        sims = np.empty((len(q), k), dtype=np.float32)
        idx = np.empty((len(q), k), dtype=np.int64)
        for start in range(0, len(q), self.config.chunk_size):
            stop = start + self.config.chunk_size
            sims[start:stop], idx[start:stop] = self._index.search(q[start:stop], k)
        return Neighbors(np.clip(sims, -1.0, 1.0), idx)


class TorchIndex:
    """Exact search on a torch device: ``(chunk, N)`` score blocks by matrix product, then top-k."""

    kind = "exact (torch)"

    def __init__(self, database: npt.ArrayLike, config: SearchConfig | None = None) -> None:
        import torch

        self.config = config or SearchConfig()
        self.device = torch.device(self.config.device)
        self._data = torch.from_numpy(pearson_normalize(database)).to(self.device)
        self.size, self.dim = self._data.shape

    def search(self, queries: npt.ArrayLike, k: int | None = None) -> Neighbors:
        k = min(k or self.config.k, self.size)
        q = pearson_normalize(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} != index dimension {self.dim}")
        import torch

        sims, idx = [], []
        with torch.inference_mode():
            for start in range(0, len(q), self.config.chunk_size):
                block = torch.from_numpy(q[start : start + self.config.chunk_size]).to(self.device) @ self._data.T
                top = torch.topk(block, k, dim=1)
                sims.append(top.values.cpu().numpy())
                idx.append(top.indices.cpu().numpy().astype(np.int64))
        if not sims:
            return Neighbors(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        return Neighbors(np.clip(np.concatenate(sims), -1.0, 1.0), np.concatenate(idx))


class HNSWIndex(ExactIndex):
    """Approximate search: faiss's HNSW graph over the Pearson-normalised vectors (inner product); searched like
    :class:`ExactIndex`, in query chunks."""

    kind = "approximate (faiss HNSW)"

    def _build(self, dim: int) -> faiss.Index:
        import faiss

        index = faiss.IndexHNSWFlat(dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(self.config.ef_search, self.config.k)
        return index


Index = ExactIndex | TorchIndex | HNSWIndex


def make_index(database: npt.ArrayLike, config: SearchConfig | None = None) -> Index:
    """The index for a database: HNSW above ``approximate_above`` rows, else exact (torch on a GPU, faiss on
    the CPU)."""
    config = config or SearchConfig()
    size = len(np.asarray(database))
    if size > config.approximate_above:
        return HNSWIndex(database, config)
    if config.device.startswith("cuda"):
        return TorchIndex(database, config)
    return ExactIndex(database, config)


@dataclass(frozen=True)
class SearchReport(Config):
    """How a scan searched its training set (``summary.json``): the index and, for an approximate one, its
    recall@1 against exact search on ``sample`` queries (1.0 by definition for an exact index) and the largest
    amount by which the correlation it found fell short of the exact nearest neighbour's (a miss among near-ties
    costs almost nothing; a miss of a copy would show as a large shortfall)."""

    index: str
    database: int
    recall_at_1: float
    sample: int
    max_shortfall: float = 0.0


def recall_at_1(
    index: Index, database: npt.ArrayLike, queries: npt.ArrayLike, sample: int = 1000, seed: int = 0
) -> SearchReport:
    """Share of ``sample`` random queries whose nearest neighbour from ``index`` is the exact one."""
    q = np.asarray(queries)
    kind = index.kind
    if not isinstance(index, HNSWIndex) or not len(q):
        return SearchReport(kind, index.size, 1.0, 0)
    rows = np.random.default_rng(seed).choice(len(q), size=min(sample, len(q)), replace=False)
    found = index.search(q[rows], 1)
    exact = ExactIndex(database, SearchConfig(k=1)).search(q[rows])
    # ties: a different row with the same correlation is as good an answer
    hit = (found.index[:, 0] == exact.index[:, 0]) | np.isclose(found.best, exact.best, atol=1e-6)
    shortfall = float(np.max(exact.best - found.best, initial=0.0))
    return SearchReport(kind, index.size, float(hit.mean()), len(rows), max(shortfall, 0.0))


def search(queries: npt.ArrayLike, database: npt.ArrayLike, config: SearchConfig | None = None) -> Neighbors:
    """Top-k Pearson neighbours of ``queries`` in ``database`` (both ``(N, D)``)."""
    return make_index(database, config).search(queries)


def brute_force(queries: npt.ArrayLike, database: npt.ArrayLike, k: int) -> Neighbors:
    """Reference implementation with numpy (float64 scores, stable sort), for tests and benchmarks."""
    scores = pearson_normalize(queries).astype(np.float64) @ pearson_normalize(database).T.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return Neighbors(np.take_along_axis(scores, order, axis=1).astype(np.float32), order.astype(np.int64))


def _search_shard(
    database: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], config: SearchConfig, offset: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """One shard's exact top-k, its row numbers made global (a Ray task: see :func:`search_sharded`)."""
    found = make_index(database, config).search(queries)
    return found.similarity, found.index + offset


def merge_top_k(parts: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]], k: int) -> Neighbors:
    """Each query's best ``k`` over all shards' lists: highest similarity first, ties to the lower row (as one
    search over the whole database orders them)."""
    sims = np.concatenate([p[0] for p in parts], axis=1)
    idx = np.concatenate([p[1] for p in parts], axis=1)
    order = np.lexsort((idx, -sims), axis=1)[:, :k]
    return Neighbors(np.take_along_axis(sims, order, axis=1), np.take_along_axis(idx, order, axis=1))


def search_sharded(
    queries: npt.ArrayLike,
    database: npt.ArrayLike,
    config: SearchConfig | None = None,
    address: str = "local",
    shards: int = 2,
) -> Neighbors:
    """Exact search with the database split into ``shards`` contiguous parts, each searched as a Ray task (on its own
    machine or GPU of a cluster); the shards' top-k lists merge into the same neighbours one search would find."""
    from core.common.cluster import run_tasks

    config = config or SearchConfig()
    db = np.ascontiguousarray(database, dtype=np.float32)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    exact = dataclasses.replace(config, approximate_above=len(db) + 1)
    bounds = np.linspace(0, len(db), max(1, min(shards, len(db))) + 1).astype(int)
    calls = [(db[a:b], q, exact, int(a)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return merge_top_k(run_tasks(_search_shard, calls, address), min(config.k, len(db)))


@dataclass(frozen=True)
class NeighborTables:
    """The four searches the metrics need."""

    synthetic_to_train: Neighbors
    train_to_synthetic: Neighbors
    train_to_val: Neighbors
    val_to_train: Neighbors
    search: SearchReport | None = None  # how the training set was searched (an approximate index's recall@1)


def search_all(
    train: npt.ArrayLike,
    val: npt.ArrayLike,
    synthetic: npt.ArrayLike,
    config: SearchConfig | None = None,
    ray: str = "",
    shards: int = 0,
) -> NeighborTables:
    """Run the four directions with one index per database (and measure the training index's recall@1 when it
    is approximate). With ``ray``, the training set (the large database) is split into ``shards`` (0: 2) searched
    exactly as Ray tasks, and their top-k lists merged (:func:`search_sharded`)."""
    config = config or SearchConfig()
    if ray:
        count = shards or 2
        return NeighborTables(
            synthetic_to_train=search_sharded(synthetic, train, config, ray, count),
            train_to_synthetic=make_index(synthetic, config).search(train),
            train_to_val=make_index(val, config).search(train),
            val_to_train=search_sharded(val, train, config, ray, count),
            search=SearchReport(f"exact, {count} shards on Ray", len(np.asarray(train)), 1.0, 0),
        )
    train_index = make_index(train, config)
    return NeighborTables(
        synthetic_to_train=train_index.search(synthetic),
        train_to_synthetic=make_index(synthetic, config).search(train),
        train_to_val=make_index(val, config).search(train),
        val_to_train=train_index.search(val),
        search=recall_at_1(train_index, train, synthetic),
    )
