"""Nearest-neighbour search by Pearson correlation between embeddings.

Exact by default: faiss ``IndexFlatIP`` on the CPU, or a chunked matrix product with top-k in torch on a GPU.
Above ``approximate_above`` (10 million) database rows an approximate index answers (:class:`ApproximateIndex`), and
its recall is guaranteed by measurement, never assumed: every set of queries it is asked about is first searched
on a seeded sample both exactly and approximately; while the approximate index finds the exact nearest neighbour
for fewer than ``target_recall`` (0.99) of the sample, it widens its search (IVF: doubles ``nprobe``; HNSW: doubles
``ef_search``), and if the cap is reached first (IVF: scanning ``max_scan`` of the database, beyond which exact search
is the cheaper answer anyway) it answers exactly from then on. What was used and the recall measured go into the
:class:`SearchReport` recorded with the results (:attr:`ApproximateIndex.report`): an approximate answer is never
silently taken for an exact one, nor an exact fallback for an approximate answer.

Measured with ``benchmarks/scale.py`` (``benchmarks/results/scale.md``: 128-d, 5,000 queries, k 5, default
settings; 2 CPU cores shared with other jobs, so seconds are several times a quiet run's, while the indexes of one
data set and size ran side by side). Two data sets: ``clusters``, the benchmark's 2,000 Gaussian clusters with
queries from other clusters (no query has a near copy: as hard as Gaussian noise), and ``patients``, clustered like
a detector's embeddings (each patient's slices on a smooth path, a fifth of the queries near-copies).

- Recall: every approximate answer met the target on its 1,000-query sample (0.990 to 0.997), and 0.989 to 0.999
  of all 5,000 queries. IVF needed 6 % of its cells on ``patients`` (nprobe 64 of 894 at 200,000 rows, 128 of 2,000
  at 1M) and 13 % on ``clusters`` at 1M (256 of 2,000: 0.992); at 200,000 rows a quarter of the cells gave 0.972 on
  ``clusters``, so it answered exactly. HNSW (M 32) needed ef 1,024 (``patients``) and 2,048 (``clusters``); at its
  old fixed ef 256 it found the exact nearest neighbour of 0.66 of the ``clusters`` queries.
- IVF rather than HNSW: at 200,000 rows HNSW took 41 to 55 s to build against IVF's 7 to 10 s, and 3.2 to 7.6 times
  exact search's build + search time (at 1M rows, 378 s to build in a trial run against IVF's 47 to 56 s). Peak
  memory above the data at 1M: exact 620 MiB, IVF 780 to 810 MiB (its 8-bit codes and the whole vectors).
- IVF settings: 8-bit codes with the best ``rerank`` (8) x k candidates re-scored from the whole vectors found the
  same neighbours as whole-vector lists at every nprobe (trial run, 200,000 ``patients`` rows), and scanned faster.
  Twice the square root of the rows in cells: at 1M ``clusters`` rows, 1,000 cells reached 0.935 scanning 13 % of
  the data where 2,000 reached 0.990 (trial run; training k-means on 40 rows a cell took 30 s under that load).
  Scanning a cell costs about twice as much per vector as exact search (0.28 of exact search's time at 13 % of the
  cells, 0.53 at 26 %), so past ``max_scan`` (a quarter) exact search is about as fast, and exact.
- ``approximate_above``: exact search is matrix-product bound (about 94 GFLOP/s on this machine when quiet, 2 Q N d
  FLOPs: 5,000 queries against 1M 128-d rows in about 14 s) and needs no build. At 200,000 and 1M rows no approximate
  index was faster in total than exact search for 5,000 queries (IVF 1.04 to 1.11 times its build + search, 1.95
  where it fell back; HNSW 3.2 to 7.6). IVF's build grows as N^1.5 (k-means over 2 sqrt(N) cells), exact search as
  N Q, so the index repays its build only for query sets of tens of thousands; and in a scan the training scans
  searched against the synthetic and validation sets (exact at every size) cost as much again. So exact search
  answers up to 10 million rows (5 GB of 128-d vectors; about 2.3 min per 5,000 queries on a quiet machine).

A query set no larger than the calibration sample is searched exactly (the calibration would compute the exact
answer for every query anyway).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from core.common.config import Config, check_range

if TYPE_CHECKING:  # faiss and torch load with the first index, not with the results' types
    import faiss

logger = logging.getLogger(__name__)


class Approximate(enum.StrEnum):
    """The approximate index above ``approximate_above`` rows."""

    IVF = "ivf"  # k-means cells of 8-bit codes, candidates re-scored from the whole vectors (exact similarities)
    HNSW = "hnsw"  # a navigable small-world graph


@dataclass(frozen=True)
class SearchConfig(Config):
    """How to search: ``k`` neighbours, queries processed ``chunk_size`` at a time.

    Attributes:
        approximate_above: database rows above which an approximate index replaces exact search (the module
            docstring says why 10 million).
        approximate: which one, ``ivf`` (default) or ``hnsw``.
        target_recall: the recall@1 against exact search the approximate index must reach on each query set's
            calibration sample, or answer exactly instead.
        calibration_sample, seed: queries sampled (seeded) to measure recall@1 on.
        nlist: IVF cells (0: twice the square root of the database rows).
        nprobe, max_scan: the IVF cells searched at first, and the share of all cells the widened search may reach
            before exact search is used instead.
        rerank: IVF candidates per neighbour re-scored exactly from the whole vectors.
        hnsw_m, ef_search, max_ef_search: the HNSW graph's links per node, its search breadth at first, and the
            breadth it may widen to before exact search is used instead.
        device: ``cuda[:i]`` searches exactly with torch on that GPU; anything else uses faiss on the CPU.
    """

    k: int = 5
    chunk_size: int = 4096
    approximate_above: int = 10_000_000
    approximate: Approximate = Approximate.IVF
    target_recall: float = 0.99
    calibration_sample: int = 1000
    seed: int = 0
    nlist: int = 0
    nprobe: int = 8
    max_scan: float = 0.25
    rerank: int = 8
    hnsw_m: int = 32
    ef_search: int = 256
    max_ef_search: int = 2048
    device: str = "cpu"

    def validate(self) -> None:
        check_range("target_recall", self.target_recall, 0.0, 1.0)
        check_range("max_scan", self.max_scan, 0.0, 1.0)
        for name in ("calibration_sample", "nprobe", "rerank", "hnsw_m", "ef_search", "max_ef_search", "chunk_size"):
            check_range(name, getattr(self, name), 1)
        check_range("nlist", self.nlist, 0)


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


def pearson_normalize(vectors: npt.ArrayLike, chunk: int = 65536) -> npt.NDArray[np.float32]:
    """Centre each row and scale it to unit length, so inner product = Pearson correlation.

    Args:
        vectors: ``(N, D)`` embeddings.
        chunk: rows computed in float64 at a time (10 million 128-d rows at once would need 10 GiB of scratch).

    Returns:
        ``(N, D)`` float32; a constant row becomes all zeros (correlation 0 with anything).
    """
    x = _rows(vectors)
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, len(x), chunk):
        out[start : start + chunk] = _normalize_block(x[start : start + chunk])
    return out


def _rows(vectors: npt.ArrayLike) -> npt.NDArray[Any]:
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {x.shape}")
    return x


def _normalize_block(block: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    part = block.astype(np.float64)
    part -= part.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(part, axis=1, keepdims=True)
    return np.divide(part, norms, out=np.zeros_like(part), where=norms > 0).astype(np.float32)


def _add(index: faiss.Index, database: npt.NDArray[Any], chunk: int = 65536) -> None:
    """Add ``database`` to a faiss index Pearson-normalised a chunk at a time (never a whole normalised copy)."""
    for start in range(0, len(database), chunk):
        index.add(_normalize_block(database[start : start + chunk]))


def _faiss() -> Any:
    import faiss

    # faiss scores fewer than 128,000 / d queries per call with a loop of dot products instead of its blocked
    # matrix product: 8 GFLOP/s against 94 on this project's 2-core machine, so 512 queries against 200,000
    # training embeddings took 3.3 s instead of 0.28 s. The matrix product is as fast at every size here.
    faiss.cvar.distance_compute_blas_threshold = 0
    return faiss


def _chunked(
    index: faiss.Index, q: npt.NDArray[np.float32], k: int, chunk: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``index.search`` over ``q`` in chunks of ``chunk`` queries (the ``(chunk, N)`` score block bounds memory)."""
    sims = np.empty((len(q), k), dtype=np.float32)
    idx = np.empty((len(q), k), dtype=np.int64)
    for start in range(0, len(q), chunk):
        sims[start : start + chunk], idx[start : start + chunk] = index.search(q[start : start + chunk], k)
    return sims, idx


def _neighbors(sims: npt.NDArray[np.float32], idx: npt.NDArray[np.int64]) -> Neighbors:
    return Neighbors(np.clip(sims, -1.0, 1.0), idx)


class ExactIndex:
    """An exact inner-product index over Pearson-normalised vectors.

    faiss ``IndexFlatIP`` is thread-safe for search; queries are chunked so that the
    ``(chunk, N)`` score block bounds memory.
    """

    kind = "exact (faiss flat)"

    def __init__(self, database: npt.ArrayLike, config: SearchConfig | None = None) -> None:
        self.config = config or SearchConfig()
        x = _rows(database)
        self.size, self.dim = x.shape
        self._index = _faiss().IndexFlatIP(self.dim)
        _add(self._index, x)

    def search(self, queries: npt.ArrayLike, k: int | None = None) -> Neighbors:
        k = min(k or self.config.k, self.size)
        q = _queries(queries, self.dim)
        return _neighbors(*_chunked(self._index, q, k, self.config.chunk_size))


def _queries(queries: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    q = pearson_normalize(queries)
    if q.shape[1] != dim:
        raise ValueError(f"query dimension {q.shape[1]} != index dimension {dim}")
    return q


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
        q = _queries(queries, self.dim)
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


def sample_rows(count: int, sample: int, seed: int) -> npt.NDArray[np.int64]:
    """The seeded, sorted sample of ``min(sample, count)`` query rows that recall@1 is measured on."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=min(sample, count), replace=False)).astype(np.int64)


def agreement(found: Neighbors, exact: Neighbors) -> tuple[float, float]:
    """Recall@1 of ``found`` against ``exact`` (same queries) and the largest correlation shortfall of its best."""
    # ties: a different row with the same correlation is as good an answer
    hit = (found.index[:, 0] == exact.index[:, 0]) | np.isclose(found.best, exact.best, atol=1e-6)
    shortfall = float(np.max(exact.best - found.best, initial=0.0))
    return float(hit.mean()) if len(hit) else 1.0, max(shortfall, 0.0)


class ApproximateIndex:
    """An approximate index over Pearson-normalised vectors that meets ``target_recall`` by measurement.

    Each :meth:`search` first calibrates on its own queries: a seeded sample of ``calibration_sample`` of them is
    searched exactly (from vectors the index keeps whole) and approximately, and the search breadth doubles until
    recall@1 on the sample reaches ``target_recall``. Breadth never shrinks, so an earlier query set keeps the
    recall it was measured at. When the cap is reached first, the index answers exactly from then on and says so
    in :attr:`kind` and :attr:`report` (and in the log). Subclasses build the index and name the breadth.
    Unlike :class:`ExactIndex`, not for concurrent searches: a search may widen the breadth.

    Attributes:
        breadth: the search breadth in use (IVF ``nprobe``, HNSW ``ef_search``).
        fell_back: why the index answers exactly, or empty while it answers approximately.
        searches: one :class:`SearchReport` per :meth:`search`: what answered it and the recall measured.
    """

    method: ClassVar[str] = ""

    def __init__(self, database: npt.ArrayLike, config: SearchConfig | None = None) -> None:
        self.config = config or SearchConfig()
        x = _rows(database)
        self.size, self.dim = x.shape
        self._flat = self._build(_faiss(), x)
        self.breadth = self._first_breadth()
        self.fell_back = ""
        self.searches: list[SearchReport] = []

    # what a subclass supplies
    def _build(self, faiss: Any, database: npt.NDArray[Any]) -> Any:
        """Build the approximate index over ``database`` (normalised with :func:`_add`); return the flat index
        holding the same normalised vectors."""
        raise NotImplementedError

    def _first_breadth(self) -> int:
        raise NotImplementedError

    def _wider(self, breadth: int) -> int | None:
        """The next breadth to try (double, up to the cap), or ``None`` past the cap."""
        raise NotImplementedError

    def _describe(self, breadth: int) -> str:
        raise NotImplementedError

    def _search(self, q: npt.NDArray[np.float32], k: int, breadth: int) -> Neighbors:
        raise NotImplementedError

    # the shared behaviour
    @property
    def kind(self) -> str:
        """What answers now: the approximate index with its settings, or exact search and why."""
        if self.fell_back:
            return f"exact (faiss flat; {self.fell_back})"
        return f"approximate (faiss {self.method}, {self._describe(self.breadth)})"

    @property
    def report(self) -> SearchReport:
        """Every search so far in one record: what answered (``, then `` joins changes), the lowest recall@1
        measured among the approximate answers with its sample, their largest shortfall; 1.0 on no sample when
        every answer was exact."""
        if not self.searches:
            return SearchReport(f"{self.kind}; nothing searched yet", self.size, 1.0, 0)
        kinds = list(dict.fromkeys(r.index for r in self.searches))
        approximate = [r for r in self.searches if r.sample]
        if not approximate:
            return SearchReport(", then ".join(kinds), self.size, 1.0, 0)
        worst = min(approximate, key=lambda r: r.recall_at_1)
        shortfall = max(r.max_shortfall for r in approximate)
        return SearchReport(", then ".join(kinds), self.size, worst.recall_at_1, worst.sample, shortfall)

    def exact_search(self, queries: npt.ArrayLike, k: int | None = None) -> Neighbors:
        """Exact top-k from the vectors the index keeps whole (what calibration and the fallback use)."""
        k = min(k or self.config.k, self.size)
        return self._exact(_queries(queries, self.dim), k)

    def _exact(self, q: npt.NDArray[np.float32], k: int) -> Neighbors:
        return _neighbors(*_chunked(self._flat, q, k, self.config.chunk_size))

    def approximate_search(self, queries: npt.ArrayLike, k: int | None = None) -> Neighbors:
        """The approximate top-k at the current breadth, without calibrating (what :func:`recall_at_1` measures)."""
        k = min(k or self.config.k, self.size)
        return self._search(_queries(queries, self.dim), k, self.breadth)

    def search(self, queries: npt.ArrayLike, k: int | None = None) -> Neighbors:
        """Top-k of ``queries``: approximate once calibrated on them to ``target_recall``, else exact."""
        k = min(k or self.config.k, self.size)
        q = _queries(queries, self.dim)
        if not len(q):
            return self._exact(q, k)
        if self.fell_back:  # for good: the cap was reached on an earlier query set
            self.searches.append(SearchReport(self.kind, self.size, 1.0, 0))
            return self._exact(q, k)
        rows = sample_rows(len(q), self.config.calibration_sample, self.config.seed)
        if len(rows) == len(q):  # calibrating would search every query exactly: answer that
            note = f"exact (faiss flat; all {len(q)} queries within the calibration sample)"
            self.searches.append(SearchReport(note, self.size, 1.0, 0))
            return self._exact(q, k)
        self._calibrate(q[rows], k)  # records what answers this query set
        return self._exact(q, k) if self.fell_back else self._search(q, k, self.breadth)

    def _calibrate(self, sample: npt.NDArray[np.float32], k: int) -> None:
        """Widen until the top-k answers' best (as :meth:`search` returns them) is the exact nearest neighbour for
        ``target_recall`` of ``sample``, or fall back."""
        exact = self._exact(sample, 1)
        target, breadth = self.config.target_recall, self.breadth
        while True:
            recall, shortfall = agreement(self._search(sample, k, breadth), exact)
            if recall >= target:
                self.breadth = breadth
                self.searches.append(SearchReport(self.kind, self.size, recall, len(sample), shortfall))
                logger.info("%s: recall@1 %.3f on %d queries (target %s)", self.kind, recall, len(sample), target)
                return
            wider = self._wider(breadth)
            if wider is None:
                self.fell_back = (
                    f"{self.method} reached recall@1 {recall:.3f} < {target} on {len(sample)} queries at its cap, "
                    f"{self._describe(breadth)}"
                )
                self.searches.append(SearchReport(self.kind, self.size, 1.0, 0))
                logger.warning("approximate search fell back to exact: %s", self.fell_back)
                return
            breadth = wider


class IVFIndex(ApproximateIndex):
    """faiss inverted lists with exact re-ranking: k-means cells (spherical, trained on a seeded sample) hold each
    vector as 8-bit codes (``IndexIVFScalarQuantizer``); a query scans its ``nprobe`` nearest cells and the best
    ``rerank * k`` candidates are re-scored from the whole vectors (``IndexRefineFlat``), so every similarity it
    returns is exact. The whole vectors also serve calibration and the exact fallback (peak memory at 1M 128-d rows:
    1.26 to 1.31 times exact search's)."""

    method = "IVF"

    def _build(self, faiss: Any, database: npt.NDArray[Any]) -> Any:
        size = len(database)
        self.nlist = min(self.config.nlist or max(1, min(round(2 * math.sqrt(size)), size // 39)), size)
        self.max_nprobe = max(1, math.ceil(self.config.max_scan * self.nlist))
        self._quantizer = faiss.IndexFlatIP(self.dim)
        self._ivf = faiss.IndexIVFScalarQuantizer(
            self._quantizer, self.dim, self.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        self._ivf.cp.spherical = True  # centroids on the unit sphere, as the vectors are
        self._ivf.cp.seed = self.config.seed
        self._ivf.train(pearson_normalize(database[sample_rows(size, 40 * self.nlist, self.config.seed)]))
        self._index = faiss.IndexRefineFlat(self._ivf)
        self._index.k_factor = self.config.rerank
        _add(self._index, database)
        return faiss.downcast_index(self._index.refine_index)

    def _first_breadth(self) -> int:
        return min(self.config.nprobe, self.max_nprobe)

    def _wider(self, breadth: int) -> int | None:
        return None if breadth >= self.max_nprobe else min(2 * breadth, self.max_nprobe)

    def _describe(self, breadth: int) -> str:
        return f"{self.nlist} lists, nprobe {breadth}, 8-bit codes re-ranked exactly"

    def _search(self, q: npt.NDArray[np.float32], k: int, breadth: int) -> Neighbors:
        self._ivf.nprobe = breadth
        return _neighbors(*_chunked(self._index, q, k, self.config.chunk_size))


class HNSWIndex(ApproximateIndex):
    """faiss ``IndexHNSWFlat`` (inner product): a graph with ``hnsw_m`` links per node searched with breadth
    ``ef_search``; its flat storage serves calibration and the exact fallback."""

    method = "HNSW"

    def _build(self, faiss: Any, database: npt.NDArray[Any]) -> Any:
        self._index = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        _add(self._index, database)
        return faiss.downcast_index(self._index.storage)

    def _first_breadth(self) -> int:
        return min(self.config.ef_search, self.config.max_ef_search)

    def _wider(self, breadth: int) -> int | None:
        cap = self.config.max_ef_search
        return None if breadth >= cap else min(2 * breadth, cap)

    def _describe(self, breadth: int) -> str:
        return f"M {self.config.hnsw_m}, ef {breadth}"

    def _search(self, q: npt.NDArray[np.float32], k: int, breadth: int) -> Neighbors:
        self._index.hnsw.efSearch = max(breadth, k)
        return _neighbors(*_chunked(self._index, q, k, self.config.chunk_size))


Index = ExactIndex | TorchIndex | ApproximateIndex


def make_index(database: npt.ArrayLike, config: SearchConfig | None = None) -> Index:
    """The index for a database: approximate (IVF, or HNSW) above ``approximate_above`` rows, else exact (torch on
    a GPU, faiss on the CPU)."""
    config = config or SearchConfig()
    size = len(np.asarray(database))
    if size > config.approximate_above:
        return HNSWIndex(database, config) if config.approximate == Approximate.HNSW else IVFIndex(database, config)
    if config.device.startswith("cuda"):
        return TorchIndex(database, config)
    return ExactIndex(database, config)


def search_report(index: Index) -> SearchReport:
    """How ``index`` has searched: an approximate index's :attr:`~ApproximateIndex.report`; exact: recall 1."""
    if isinstance(index, ApproximateIndex):
        return index.report
    return SearchReport(index.kind, index.size, 1.0, 0)


def recall_at_1(
    index: Index, database: npt.ArrayLike, queries: npt.ArrayLike, sample: int = 1000, seed: int = 0
) -> SearchReport:
    """Recall@1 of ``index`` as it searches now, measured afresh on ``sample`` seeded queries against an exact search
    of ``database`` (the rows the index holds): 1.0 on no sample for an exact index or one that fell back."""
    q = np.asarray(queries)
    if not isinstance(index, ApproximateIndex) or index.fell_back or not len(q):
        return SearchReport(index.kind, index.size, 1.0, 0)
    rows = sample_rows(len(q), sample, seed)
    found = index.approximate_search(q[rows])  # k neighbours, as search() asks for: its best is scored
    exact = ExactIndex(database, SearchConfig(k=1)).search(q[rows])
    recall, shortfall = agreement(found, exact)
    return SearchReport(index.kind, index.size, recall, len(rows), shortfall)


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
        search=search_report(train_index),
    )
