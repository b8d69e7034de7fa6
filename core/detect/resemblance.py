"""Patient-level resemblance: does a synthetic sample look like one training *patient* more than real people do?

A copy reproduces one training scan. A sample can also resemble one patient's anatomy without copying any
single scan of it (a slice between two of that patient's slices, a volume mixing their features). That is a
different finding with a different meaning for consent, so it is reported beside the copy fraction and never
merged into it.

For a query and a training patient, the *patient similarity* is the mean of the query's ``top`` highest
embedding correlations with that patient's scans (all of them when the patient has fewer): one scan that
happens to match does not make a patient resemble, several do. A query's nearest patient is the training
patient with the highest patient similarity.

The null is the same statistic for real scans of patients who were not trained on (validation -> nearest
training patient); a synthetic sample *resembles a training patient* when its patient similarity is above
that null's percentile (or the order statistic bounding it, ``heldout-ucb``). With ``heldout`` rules the
percentile holds for the validation patients; read it with the scan's unseen-patient FPR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.common.config import Config, check_range
from core.common.errors import MemoScopeError
from core.detect.metrics import Fraction, ThresholdRule, percentile_threshold, wilson_interval
from core.detect.search import pearson_normalize


@dataclass(frozen=True)
class NearestPatients:
    """Each query's nearest training patient and its patient similarity."""

    patient: list[str]
    similarity: npt.NDArray[np.float32]


def nearest_patients(
    queries: npt.ArrayLike,
    train: npt.ArrayLike,
    train_patients: list[str],
    top: int = 3,
    chunk_size: int = 1024,
) -> NearestPatients:
    """The nearest training patient of each query embedding (see the module docstring).

    Args:
        queries: ``(Q, D)`` embeddings.
        train: ``(N, D)`` training embeddings; ``train_patients`` names each row's patient.
        top: how many of a patient's best-matching scans are averaged.
        chunk_size: queries per block (memory: ``chunk_size x N`` floats).
    """
    q, t = pearson_normalize(queries), pearson_normalize(train)
    if len(train_patients) != len(t):
        raise ValueError(f"{len(train_patients)} patient IDs for {len(t)} training embeddings")
    names, codes = np.unique(np.asarray(train_patients), return_inverse=True)
    columns = [np.flatnonzero(codes == p) for p in range(len(names))]
    best = np.full(len(q), -np.inf, dtype=np.float32)
    which = np.zeros(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk_size):
        sims = q[start : start + chunk_size] @ t.T
        for p, cols in enumerate(columns):
            m = min(top, len(cols))
            part = sims[:, cols]
            mean_top = -np.partition(-part, m - 1, axis=1)[:, :m].mean(axis=1)
            better = mean_top > best[start : start + chunk_size]
            best[start : start + chunk_size][better] = mean_top[better]
            which[start : start + chunk_size][better] = p
    return NearestPatients([str(names[i]) for i in which], best)


@dataclass(frozen=True)
class PatientResemblance(Config):
    """The scan's patient-level resemblance (``summary.json``).

    Attributes:
        tau: patient similarity above which a sample resembles a training patient.
        rule, percentile: how ``tau`` was set on the null (validation -> nearest training patient).
        top: how many of a patient's scans each patient similarity averages.
        null_size: validation scans in the null.
        fraction: synthetic samples that resemble a training patient, with a Wilson interval.
        null_fraction: validation scans above ``tau`` (how often real unseen people resemble one by this test).
    """

    tau: float
    rule: ThresholdRule
    percentile: float
    top: int
    null_size: int
    fraction: Fraction
    null_fraction: float

    def validate(self) -> None:
        check_range("top", self.top, 1)

    def describe(self) -> str:
        """One plain sentence for the Overview page and the report."""
        f = self.fraction
        return (
            f"Resemble a training patient (a separate finding, not counted as copies): {f.count}/{f.total} "
            f"synthetic samples ({f.value:.1%}, 95 % CI {f.low:.1%} to {f.high:.1%}) are closer to one training "
            f"patient, averaged over that patient's {self.top} best-matching scans, than {self.percentile:g} % of "
            f"real scans of validation patients are (embedding correlation above {self.tau:.3f}; {self.rule} rule, "
            f"{self.null_size} validation scans, {self.null_fraction:.1%} of them above it)."
        )


def patient_resemblance(
    synthetic: NearestPatients,
    null: NearestPatients,
    percentile: float,
    rule: ThresholdRule,
    top: int,
) -> PatientResemblance:
    """Calibrate on ``null`` (validation -> training patients) and count the synthetic samples above it.

    ``heldout-ucb`` falls back to the plain percentile when the null is too small for the bound (the
    resemblance is a secondary finding; the scan's own rule has already refused such a set for the copy call).
    """
    if not len(null.similarity):
        raise MemoScopeError("patient resemblance needs validation scans; the validation set is empty.")
    if rule not in (ThresholdRule.HELDOUT, ThresholdRule.HELDOUT_UCB):
        rule = ThresholdRule.HELDOUT
    try:
        tau = percentile_threshold(null.similarity, percentile, rule)
    except MemoScopeError:
        rule = ThresholdRule.HELDOUT
        tau = percentile_threshold(null.similarity, percentile, rule)
    flags = synthetic.similarity > tau
    count, total = int(flags.sum()), len(flags)
    low, high = wilson_interval(count, total)
    fraction = Fraction(
        count, total, count / max(total, 1), low, high, "wilson; patient similarity above the validation null"
    )
    null_fraction = float((null.similarity > tau).mean())
    return PatientResemblance(tau, rule, percentile, top, len(null.similarity), fraction, null_fraction)
