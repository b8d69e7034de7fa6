"""Exact nearest-neighbour search by Pearson correlation between embeddings (faiss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
import numpy.typing as npt

Direction = Literal["synthetic->train", "train->synthetic", "train->val", "val->train"]


@dataclass(frozen=True)
class SearchConfig:
    """How to search: ``k`` neighbours, queries processed ``chunk_size`` at a time."""

    k: int = 5
    chunk_size: int = 4096


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

    def __init__(self, database: npt.ArrayLike, config: SearchConfig | None = None) -> None:
        self.config = config or SearchConfig()
        data = pearson_normalize(database)
        self.size, self.dim = data.shape
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(data)

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


def search(queries: npt.ArrayLike, database: npt.ArrayLike, config: SearchConfig | None = None) -> Neighbors:
    """Top-k Pearson neighbours of ``queries`` in ``database`` (both ``(N, D)``)."""
    return ExactIndex(database, config).search(queries)


def brute_force(queries: npt.ArrayLike, database: npt.ArrayLike, k: int) -> Neighbors:
    """Reference implementation with numpy (float64 scores, stable sort), for tests and benchmarks."""
    scores = pearson_normalize(queries).astype(np.float64) @ pearson_normalize(database).T.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return Neighbors(np.take_along_axis(scores, order, axis=1).astype(np.float32), order.astype(np.int64))


@dataclass(frozen=True)
class NeighborTables:
    """The four searches the metrics need."""

    synthetic_to_train: Neighbors
    train_to_synthetic: Neighbors
    train_to_val: Neighbors
    val_to_train: Neighbors


def search_all(
    train: npt.ArrayLike, val: npt.ArrayLike, synthetic: npt.ArrayLike, config: SearchConfig | None = None
) -> NeighborTables:
    """Run the four directions with one index per database."""
    config = config or SearchConfig()
    train_index = ExactIndex(train, config)
    return NeighborTables(
        synthetic_to_train=train_index.search(synthetic),
        train_to_synthetic=ExactIndex(synthetic, config).search(train),
        train_to_val=ExactIndex(val, config).search(train),
        val_to_train=train_index.search(val),
    )
