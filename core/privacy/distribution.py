"""Does the model stay closer to its training scans than new patients' scans are? Threshold-free, set-level tests.

All three work on embeddings (the scan's detector, Pearson-normalised, so squared Euclidean distance is
``2 - 2 * correlation``), with a held-out set of real scans of the same source (the scan's validation set) as the
reference of what "new" looks like:

- ``C_T`` (Meehan, Chaudhuri and Dasgupta, AISTATS 2020): training embeddings are split into cells by k-means;
  in each cell the distances of synthetic samples to their nearest training scan are compared with those of
  held-out scans by the Mann-Whitney U test (as a z-score); the cells' z-scores are combined weighted by their
  share of held-out scans. About 0 when the samples are as far from training as new scans; strongly negative
  (below -3) when the samples sit closer to training than new scans do: copying at the level of the data set.
- ``AuthPct`` (Alaa et al., ICML 2022): a sample is unauthentic when it is nearer its nearest training scan than that
  scan's own nearest other training scan; the authentic share of synthetic samples, next to that of held-out scans
  (real new scans are the reference, not 100 %).
- nearest-record share (the idea of sdmetrics' DCROverfittingProtection): with as many training scans as held-out
  scans (training subsampled), the share of synthetic samples whose nearest record is a training scan; about one
  half when the samples are as new to training as held-out scans are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.common.config import Config
from core.common.errors import MemoScopeError
from core.detect.metrics import wilson_interval
from core.detect.search import ExactIndex, pearson_normalize

MIN_PER_CELL = 20  # held-out scans per k-means cell the cell count aims at (Meehan et al. use cells of ~20+)
MIN_SYNTHETIC_IN_CELL = 5  # cells with fewer synthetic samples are left out of C_T (too few for a rank test)


def _nearest(database: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int = 1) -> npt.NDArray:
    """Squared distances of Pearson-normalised ``queries`` to their ``k`` nearest ``database`` rows, ``(Q, k)``."""
    found = ExactIndex(database).search(queries, k)
    return np.maximum(0.0, 2.0 - 2.0 * found.similarity.astype(np.float64))


@dataclass(frozen=True)
class CTResult(Config):
    """Meehan et al.'s C_T: ``value`` (about N(0, 1) without copying; strongly negative: copying), its one-sided
    ``p_value`` (small: copying), ``cells`` used of ``cells_total``."""

    value: float
    p_value: float
    cells: int
    cells_total: int

    def sentence(self) -> str:
        reading = (
            "the samples sit closer to the training scans than new patients' scans do: copying across the set"
            if self.value < -3
            else "the samples are about as far from the training scans as new patients' scans are"
            if abs(self.value) <= 3
            else "the samples are farther from the training scans than new patients' scans (under-fitting, not copying)"
        )
        return (
            f"C_T = {self.value:.1f} (one-sided p = {self.p_value:.2g}, {self.cells} of {self.cells_total} cells): "
            f"{reading}. It compares distances, not images: it cannot say which sample copies which scan."
        )


def ct_test(
    train: npt.ArrayLike, heldout: npt.ArrayLike, synthetic: npt.ArrayLike, seed: int = 0, cells: int = 0
) -> CTResult:
    """C_T over a k-means partition of the training embeddings (``cells``: 0 = one cell per ~20 held-out scans and
    ~20 samples, at most 50)."""
    import faiss
    from scipy.stats import mannwhitneyu, norm

    t, p, q = (pearson_normalize(x) for x in (train, heldout, synthetic))
    if min(len(t), len(p), len(q)) < MIN_SYNTHETIC_IN_CELL:
        raise MemoScopeError(
            f"C_T needs at least {MIN_SYNTHETIC_IN_CELL} training, held-out and synthetic embeddings; got "
            f"{len(t)}, {len(p)}, {len(q)}."
        )
    k = cells or max(1, min(50, len(p) // MIN_PER_CELL, len(q) // MIN_PER_CELL, len(t)))
    kmeans = faiss.Kmeans(t.shape[1], k, niter=25, seed=seed, min_points_per_centroid=1)
    kmeans.train(t)
    cell_p, cell_q = kmeans.index.search(p, 1)[1][:, 0], kmeans.index.search(q, 1)[1][:, 0]
    dist_p, dist_q = _nearest(t, p)[:, 0], _nearest(t, q)[:, 0]
    z, weights = [], []
    for cell in range(k):
        a, b = dist_q[cell_q == cell], dist_p[cell_p == cell]
        if len(a) < MIN_SYNTHETIC_IN_CELL or len(b) == 0:
            continue
        u = mannwhitneyu(a, b, alternative="two-sided").statistic  # pairs where the sample is farther
        m, n = len(a), len(b)
        z.append((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))
        weights.append(len(b) / len(p))
    if not z:
        raise MemoScopeError("C_T: no cell holds enough synthetic samples; give more samples or fewer cells.")
    w = np.asarray(weights)
    value = float(np.dot(w, z) / math.sqrt(float(np.sum(w**2))))
    return CTResult(value, float(norm.cdf(value)), len(z), k)


@dataclass(frozen=True)
class ShareResult(Config):
    """A share of synthetic samples with its 95 % Wilson interval, the reference it is read against (held-out scans'
    own share, or one half), and the two-sided ``p_value`` of a difference from that reference."""

    value: float
    low: float
    high: float
    n: int
    reference: float
    p_value: float


def _share(count: int, total: int, reference: float, p_value: float) -> ShareResult:
    low, high = wilson_interval(count, total)
    return ShareResult(count / total, low, high, total, reference, p_value)


def authenticity(train: npt.ArrayLike, heldout: npt.ArrayLike, synthetic: npt.ArrayLike) -> tuple[ShareResult, float]:
    """AuthPct of the synthetic samples (reference: that of the held-out scans), and the held-out scans' own."""
    t = pearson_normalize(train)
    if len(t) < 2:
        raise MemoScopeError("AuthPct needs at least 2 training embeddings.")
    own = _nearest(t, t, 2)[:, 1]  # each training scan's nearest other training scan

    def authentic(x: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        x = pearson_normalize(x)
        found = ExactIndex(t).search(x, 1)
        d = np.maximum(0.0, 2.0 - 2.0 * found.similarity[:, 0].astype(np.float64))
        return d >= own[found.index[:, 0]]

    from scipy.stats import fisher_exact

    real_flags, flags = authentic(heldout), authentic(synthetic)
    real = float(np.mean(real_flags))
    table = [[int(flags.sum()), int((~flags).sum())], [int(real_flags.sum()), int((~real_flags).sum())]]
    return _share(int(flags.sum()), len(flags), real, float(fisher_exact(table).pvalue)), real


def nearest_record_share(
    train: npt.ArrayLike, heldout: npt.ArrayLike, synthetic: npt.ArrayLike, seed: int = 0, repeats: int = 10
) -> ShareResult:
    """The share of synthetic samples whose nearest record is a training scan, training subsampled to the held-out
    set's size (``repeats`` subsamples, averaged); about 0.5 when the samples are as new as held-out scans."""
    t, p, q = (pearson_normalize(x) for x in (train, heldout, synthetic))
    n = min(len(t), len(p))
    if n < 1 or len(q) < 1:
        raise MemoScopeError("the nearest-record share needs training, held-out and synthetic embeddings.")
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(repeats):
        ts = t[rng.choice(len(t), n, replace=False)]
        ps = p[rng.choice(len(p), n, replace=False)]
        shares.append(float(np.mean(_nearest(ts, q)[:, 0] < _nearest(ps, q)[:, 0])))
    from scipy.stats import binomtest

    # the subsamples average out which scans were drawn; the interval is that of one sample of len(q) samples
    count = round(float(np.mean(shares)) * len(q))
    return _share(count, len(q), 0.5, float(binomtest(count, len(q), 0.5).pvalue))
