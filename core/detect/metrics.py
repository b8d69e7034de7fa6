"""Calibrated memorization metrics: threshold rules, fractions with intervals, p-values, pixel checks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from core.common.config import Config
from core.common.errors import MemoScopeError


class ThresholdRule(StrEnum):
    """How tau is set. What each rule does (its null, its minimum null size, its tau, its words) is one row of
    :data:`RULES`, below: adding a rule is a member here and a row there."""

    PAPER = "paper"
    HELDOUT = "heldout"
    HELDOUT_UCB = "heldout-ucb"
    HELDOUT_PATIENT = "heldout-patient"
    FIXED = "fixed"

    @property
    def spec(self) -> RuleSpec:
        return RULES[self]

    @property
    def uses_heldout_null(self) -> bool:
        """Calibrated on validation -> training scores (the null built like the test statistic)."""
        return self.spec.null == "val_to_train"

    @property
    def meaning(self) -> str:
        """What the rule's tau means, in words a review board can read."""
        return self.spec.meaning

    @property
    def calibration_patients(self) -> int:
        """Patients a null needs to set tau (the patient bound estimates a spread between patients: 2)."""
        return self.spec.calibration_patients

    @property
    def min_patients(self) -> int:
        """Validation patients the rule needs: the held-out rules measure transfer to other patients (2), the
        patient bound estimates the spread between patients (2); the paper's rule and a fixed value need none."""
        return 2 if self.uses_heldout_null else 0


UCB_CONFIDENCE = 0.95


def is_copy(similarity: npt.ArrayLike, tau: float) -> npt.NDArray[np.bool_]:
    """The copy rule, the one place it is written: a similarity strictly above tau (as in the paper)."""
    return np.asarray(similarity) > tau


@dataclass(frozen=True)
class Threshold(Config):
    """A calibrated threshold tau.

    Attributes:
        rule: ``paper`` (percentile of train->nearest-validation correlations), ``heldout``
            (percentile of validation->nearest-train), ``heldout-ucb`` (a 95 % upper confidence bound on that
            percentile: the order statistic that lies above it with 95 % confidence, so the false-positive
            rate is at most ``1 - percentile/100`` with that confidence), or ``fixed``.
        percentile: the percentile used (``None`` for fixed).
        value: tau.
        null_size: how many null correlations calibrated it (0 for fixed).
    """

    rule: ThresholdRule
    percentile: float | None
    value: float
    null_size: int


CALIBRATED_RULES = tuple(r.value for r in ThresholdRule if r != ThresholdRule.FIXED)
RULE_CHOICES = ", ".join(CALIBRATED_RULES) + " or fixed:X"


class RuleChoice(NamedTuple):
    """A threshold rule as given (``--threshold-rule``), parsed: the rule, and the value of ``fixed:X``."""

    rule: ThresholdRule
    fixed: float | None


def parse_rule(text: str) -> RuleChoice:
    """Parse a calibrated rule's name (:data:`CALIBRATED_RULES`) or ``fixed:X`` (X in [-1, 1])."""
    if text in CALIBRATED_RULES:
        return RuleChoice(ThresholdRule(text), None)
    if text.startswith("fixed:"):
        try:
            value = float(text.split(":", 1)[1])
        except ValueError:
            value = math.nan
        if not -1.0 <= value <= 1.0:
            raise MemoScopeError(f"--threshold-rule {text!r}: fixed:X needs a number X in [-1, 1].")
        return RuleChoice(ThresholdRule.FIXED, value)
    raise MemoScopeError(f"--threshold-rule {text!r} must be {RULE_CHOICES}.")


def min_null_size(percentile: float, rule: ThresholdRule = ThresholdRule.PAPER) -> int:
    """Smallest null sample ``rule`` can use at ``percentile`` (its row's ``min_null``)."""
    if percentile >= 100:
        return math.inf  # type: ignore[return-value]
    return ThresholdRule(rule).spec.min_null(percentile)


def _percentile_min_null(percentile: float) -> int:
    """A null whose ``percentile`` leaves a value above it."""
    return math.ceil(100.0 / (100.0 - percentile))


def _ucb_min_null(percentile: float) -> int:
    """A null whose largest value exceeds the percentile with 95 % confidence."""
    return math.ceil(math.log(1 - UCB_CONFIDENCE) / math.log(percentile / 100.0))


def ucb_order_statistic(n: int, percentile: float, confidence: float = UCB_CONFIDENCE) -> int | None:
    """The 1-based rank r of the sorted null whose value exceeds the ``percentile`` with ``confidence``.

    ``P(X_(r) >= q_p) = P(Binomial(n, p) <= r - 1)``; the smallest r reaching ``confidence``, or ``None``
    when even the largest value is not enough (``n`` below :func:`min_null_size`).
    """
    from scipy import stats

    r = int(stats.binom.ppf(confidence, n, percentile / 100.0)) + 1
    while r > 1 and stats.binom.cdf(r - 2, n, percentile / 100.0) >= confidence:
        r -= 1
    return r if r <= n else None


def patient_bound(null: npt.ArrayLike, patients: Sequence[object], percentile: float) -> float:
    """tau that a real scan of a patient *not* in the null exceeds with probability ``1 - percentile/100``.

    The percentile rules treat every validation scan as an independent draw, but scans of one patient share
    that patient's anatomy and acquisition: a threshold set on a few patients can leave far more than 5 % of
    a new patient's scans above it (the planted-copy benchmark's unseen subjects: 10-24 %). This rule models
    the null's Fisher z-scores as one-way random effects, ``z = mu + b_patient + e_scan`` with between-patient
    variance ``s_b^2`` and within-patient variance ``s_w^2`` (moment estimates), and returns the upper
    prediction bound for one scan of a new patient::

        tanh(mu + t_{P-1}(percentile) * sqrt(s_b^2 + s_w^2 + var(mean of patient means)))

    over ``P`` validation patients. The Student t with ``P - 1`` degrees of freedom carries the uncertainty of
    estimating the between-patient spread from few patients: with 2 patients the bound is wide (t = 6.3 at
    the 95th percentile) and it narrows towards the normal quantile as patients are added.

    Args:
        null: ``(N,)`` each validation scan's best score to training.
        patients: the patient of each validation scan (at least two patients).
        percentile: in (0, 100).
    """
    from scipy import stats

    values = np.asarray(null, dtype=np.float64)
    labels = np.asarray([str(p) for p in patients])
    if len(labels) != len(values):
        raise ValueError(f"{len(values)} null scores but {len(labels)} patient labels")
    groups, codes = np.unique(labels, return_inverse=True)
    if len(groups) < 2:
        raise MemoScopeError(
            f"the heldout-patient rule estimates how scores vary between patients and needs validation scans of at "
            f"least 2 patients; there are {len(groups)}. Add another patient's scans or choose another rule."
        )
    z = np.arctanh(np.clip(values, -0.999999, 0.999999))
    counts = np.bincount(codes).astype(np.float64)
    means = np.bincount(codes, weights=z) / counts
    within = float(((z - means[codes]) ** 2).sum() / (len(z) - len(groups))) if len(z) > len(groups) else 0.0
    spread = float(np.var(means, ddof=1))
    between = max(0.0, spread - within * float(np.mean(1.0 / counts)))
    scale = math.sqrt(between + within + spread / len(groups))
    quantile = float(stats.t.ppf(percentile / 100.0, df=len(groups) - 1))
    return float(np.tanh(float(np.mean(means)) + quantile * scale))


def _percentile_tau(null: npt.ArrayLike, percentile: float, patients: Sequence[object] | None) -> float:
    return float(np.percentile(np.asarray(null, dtype=np.float64), percentile))


def _ucb_tau(null: npt.ArrayLike, percentile: float, patients: Sequence[object] | None) -> float:
    values = np.sort(np.asarray(null, dtype=np.float64))
    r = ucb_order_statistic(len(values), percentile)
    if r is None:
        raise MemoScopeError(
            f"the heldout-ucb rule at percentile {percentile:g} needs at least {_ucb_min_null(percentile)} "
            f"validation samples; there are {len(values)}. Add validation images or use another rule."
        )
    return float(values[r - 1])


def patient_percentile(null: npt.ArrayLike, patients: Sequence[object], percentile: float) -> float:
    """The null score that a scan of a new patient exceeds with probability at most ``1 - percentile/100``, counted
    rather than modelled: each validation patient weighs the same, shared among its scans, and tau is the smallest
    null score with at most that weight strictly above it.

    It needs no shape for the scores, but many patients: with few its upper tail is a handful of scans.
    """
    values = np.asarray(null, dtype=np.float64)
    labels = np.asarray([str(p) for p in patients])
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / (counts[codes] * len(counts))
    order = np.argsort(-values, kind="stable")
    above = np.concatenate([[0.0], np.cumsum(weights[order])[:-1]])  # weight strictly above each, from the top
    allowed = 1.0 - percentile / 100.0
    return float(values[order][np.flatnonzero(above <= allowed + 1e-12)[-1]])


def _patient_tau(null: npt.ArrayLike, percentile: float, patients: Sequence[object] | None) -> float:
    """The larger of the modelled bound (:func:`patient_bound`, right with few patients) and the counted one
    (:func:`patient_percentile`, right when the scores' upper tail is heavier than the model's normal one: on the
    16k-image scale benchmark the model alone left 7.6 % of new patients' scans above tau for a stated 5 %)."""
    if patients is None:
        raise MemoScopeError("the heldout-patient rule needs the patient of each validation scan.")
    return max(patient_bound(null, patients, percentile), patient_percentile(null, patients, percentile))


@dataclass(frozen=True)
class RuleSpec:
    """One threshold rule's behaviour: a row of :data:`RULES`.

    Attributes:
        null: which best-score null calibrates it (``train_to_val``: each training scan's best score to
            validation, the paper's; ``val_to_train``: each validation scan's best score to training, built like
            the test); ``None`` for a value chosen by hand.
        summary: a few words for option help (CLI and pages).
        meaning: what its tau means, in words a review board can read (reports and pages).
        min_null: the smallest null it can use at a percentile.
        tau: tau from the null scores, the percentile and each score's patient.
        calibration_patients: patients a null needs to set tau.
    """

    null: str | None
    summary: str
    meaning: str
    min_null: Callable[[float], int] = _percentile_min_null
    tau: Callable[[npt.ArrayLike, float, Sequence[object] | None], float] = _percentile_tau
    calibration_patients: int = 1


RULES: dict[ThresholdRule, RuleSpec] = {
    ThresholdRule.PAPER: RuleSpec(
        "train_to_val",
        "percentile of training -> nearest validation (Dar et al.)",
        "the percentile of each training scan's best score to the validation scans (Dar et al.)",
    ),
    ThresholdRule.HELDOUT: RuleSpec(
        "val_to_train",
        "percentile of validation -> nearest training (the null built like the test)",
        "the percentile of each validation scan's best score to training",
    ),
    ThresholdRule.HELDOUT_UCB: RuleSpec(
        "val_to_train",
        "a 95 % upper confidence bound on that percentile",
        "a 95 % upper confidence bound on the percentile of each validation scan's best score to training",
        min_null=_ucb_min_null,
        tau=_ucb_tau,
    ),
    ThresholdRule.HELDOUT_PATIENT: RuleSpec(
        "val_to_train",
        "a prediction bound for a scan of a new patient (allows for how patients differ)",
        "the score a scan of a new patient exceeds with the complementary probability, allowing for how much "
        "validation patients differ from each other",
        min_null=lambda percentile: 3,  # two patients, one with two scans: a spread between and within patients
        tau=_patient_tau,
        calibration_patients=2,
    ),
    ThresholdRule.FIXED: RuleSpec(None, "your value (fixed:X on the command line)", "a value chosen by hand"),
}


def rule_help() -> str:
    """Every rule and what it does, from :data:`RULES` (the CLI's and the Calibrate page's help)."""
    return "; ".join(f"{rule}: {spec.summary}" for rule, spec in RULES.items())


def percentile_threshold(
    null: npt.ArrayLike, percentile: float, rule: ThresholdRule, patients: Sequence[object] | None = None
) -> float:
    """tau from a null sample by ``rule``'s row of :data:`RULES` (``heldout-patient`` needs each score's
    ``patients``)."""
    return ThresholdRule(rule).spec.tau(null, percentile, patients)


def calibrate(
    rule: ThresholdRule,
    train_to_val: npt.ArrayLike,
    val_to_train: npt.ArrayLike,
    percentile: float = 95.0,
    fixed: float | None = None,
    val_patients: Sequence[object] | None = None,
) -> Threshold:
    """Compute tau from the null correlations.

    Args:
        rule: see :class:`Threshold`.
        train_to_val: ``(N_train,)`` each training sample's best correlation to validation.
        val_to_train: ``(N_val,)`` each validation sample's best correlation to training.
        percentile: in (0, 100).
        fixed: tau for ``rule == "fixed"``.
        val_patients: the patient of each ``val_to_train`` score (``heldout-patient`` needs them).
    """
    rule = ThresholdRule(rule)
    if rule.spec.null is None:
        if fixed is None:
            raise MemoScopeError("threshold rule 'fixed' needs a value (fixed:X).")
        return Threshold(ThresholdRule.FIXED, None, float(fixed), 0)
    if not 0.0 < percentile < 100.0:
        raise MemoScopeError(f"--percentile {percentile} must be between 0 and 100.")
    n_val = len(np.asarray(val_to_train))
    needed = min_null_size(percentile, rule)
    if n_val < needed:
        raise MemoScopeError(
            f"the validation set has {n_val} samples; the {rule} rule at percentile {percentile:g} needs at least "
            f"{needed} so that some real held-out samples lie above the threshold. Add "
            "validation images or lower --percentile."
        )
    null = np.asarray(train_to_val if rule.spec.null == "train_to_val" else val_to_train, dtype=np.float64)
    tau = percentile_threshold(null, percentile, rule, val_patients)
    return Threshold(rule, percentile, tau, len(null))


@dataclass(frozen=True)
class Fraction(Config):
    """``count / total`` with a 95 % interval and how it was computed."""

    count: int
    total: int
    value: float
    low: float
    high: float
    method: str


def wilson_interval(count: float, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``count`` may be fractional: a proportion times an
    effective sample size)."""
    if total == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = count / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    # exactly 0 or 1 at the ends (rounding would otherwise leave p = 1 just outside its own interval)
    return (0.0 if count == 0 else low, 1.0 if count == total else high)


def fraction_with_ci(
    flags: npt.ArrayLike, seed: int = 0, confidence: float = 0.95, n_resamples: int = 2000
) -> Fraction:
    """Share of True flags with a percentile-bootstrap interval over samples.

    When every flag is equal the bootstrap interval collapses to a point, which overstates
    certainty; the Wilson score interval is reported then, and ``method`` says so.
    """
    from scipy import stats

    x = np.asarray(flags, dtype=bool)
    count, total = int(x.sum()), int(x.size)
    if total == 0:
        raise MemoScopeError("no samples to compute a fraction over.")
    value = count / total
    if count in (0, total):
        low, high = wilson_interval(count, total, confidence)
        return Fraction(count, total, value, low, high, "wilson (all samples agree)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (x.astype(np.float64),),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    ci = result.confidence_interval
    return Fraction(count, total, value, float(ci.low), float(ci.high), "percentile bootstrap")


MIN_RESAMPLED_GROUPS = 10  # a bootstrap over fewer patients has too few distinct resamples to bound anything


def clustered_fraction(
    flags: npt.ArrayLike,
    groups: npt.ArrayLike,
    seed: int = 0,
    confidence: float = 0.95,
    n_resamples: int = 4000,
    unit: str = "patients",
) -> Fraction:
    """Share of True flags with an interval that resamples *groups* (patients, volumes), not samples.

    Neighbouring slices of one patient are not independent draws, so resampling slices makes an interval as if there
    were as many patients as slices. Here each bootstrap replicate draws the patients with replacement and takes
    every slice of each drawn patient (the ratio of flagged to all slices). With all flags equal, or fewer than
    :data:`MIN_RESAMPLED_GROUPS` patients (3 patients give 10 distinct resamples: far too narrow an interval), the
    Wilson interval with the number of patients as the sample size is reported instead.

    Args:
        flags: ``(N,)`` one flag per sample.
        groups: ``(N,)`` the patient (or volume) of each sample.
        unit: what a group is, for the interval's ``method`` (``patients``, ``volumes``).
    """
    x = np.asarray(flags, dtype=bool)
    labels = np.asarray(groups)
    if x.shape != labels.shape:
        raise ValueError(f"{x.shape[0]} flags but {labels.shape[0]} group labels")
    if x.size == 0:
        raise MemoScopeError("no samples to compute a fraction over.")
    names, index = np.unique(labels, return_inverse=True)
    n_groups, count, total = len(names), int(x.sum()), int(x.size)
    if n_groups == total:
        return fraction_with_ci(x, seed=seed, confidence=confidence)  # one sample per group: the plain bootstrap
    per_count = np.bincount(index, weights=x.astype(np.float64), minlength=n_groups)
    per_size = np.bincount(index, minlength=n_groups).astype(np.float64)
    by = f"{n_groups} {unit}"
    if count in (0, total) or n_groups < MIN_RESAMPLED_GROUPS:
        # as if each patient were one observation of the proportion: the least information the data could hold
        low, high = wilson_interval(count / total * n_groups, n_groups, confidence)
        why = "all scans agree" if count in (0, total) else f"too few {unit} to resample (< {MIN_RESAMPLED_GROUPS})"
        return Fraction(count, total, count / total, low, high, f"wilson with n = {by}; {why}")
    weights = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_resamples)
    ratios = (weights @ per_count) / (weights @ per_size)
    low, high = np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Fraction(count, total, count / total, float(low), float(high), f"bootstrap over {by}")


def any_per_group(flags: npt.ArrayLike, groups: npt.ArrayLike, confidence: float = 0.95) -> Fraction:
    """How many groups (patients) have at least one True flag, with a Wilson interval over the groups."""
    x = np.asarray(flags, dtype=bool)
    labels = np.asarray(groups)
    names, index = np.unique(labels, return_inverse=True)
    hit = np.bincount(index, weights=x.astype(np.float64), minlength=len(names)) > 0
    count, total = int(hit.sum()), len(names)
    low, high = wilson_interval(count, total, confidence)
    return Fraction(count, total, count / max(total, 1), low, high, f"wilson over {total} patients")


def crossfit_fpr(
    null: npt.ArrayLike,
    patients: list[str],
    percentile: float,
    rule: ThresholdRule = ThresholdRule.HELDOUT,
    confidence: float = 0.95,
) -> Fraction | None:
    """How often real scans of patients the threshold was *not* calibrated on are called copies.

    Leave one patient out: for each validation patient, tau is set by ``rule`` (one of the held-out rules)
    on the other patients' null scores (validation -> training, built like the test statistic) and that
    patient's scans above it are false positives. Pooled over patients with a Wilson interval. ``None`` with
    fewer than two patients, or when a fold has too few scans or patients for the rule (``heldout-patient``:
    three patients, so that each fold keeps two).

    Args:
        null: ``(N_val,)`` each validation scan's best score to training.
        patients: the patient of each validation scan.
    """
    values = np.asarray(null, dtype=np.float64)
    labels = np.asarray(patients)
    groups = sorted(set(patients))
    if len(groups) < 2:
        return None
    flagged = 0
    for patient in groups:
        held = labels == patient
        rest = labels[~held]
        if len(rest) < min_null_size(percentile, rule) or len(set(rest.tolist())) < rule.calibration_patients:
            return None
        tau = percentile_threshold(values[~held], percentile, rule, rest.tolist())
        flagged += int(is_copy(values[held], tau).sum())
    low, high = wilson_interval(flagged, len(values), confidence)
    return Fraction(
        flagged, len(values), flagged / len(values), low, high, f"leave-one-patient-out over {len(groups)} patients"
    )


def crossfit_needs(percentile: float, rule: ThresholdRule) -> str:
    """What :func:`crossfit_fpr` needs for ``rule``, in words (said when it could not be measured)."""
    return (
        f"validation scans of at least {rule.calibration_patients + 1} patients, and at least "
        f"{min_null_size(percentile, rule)} scans left when any one patient is held out"
    )


@dataclass(frozen=True)
class BeyondHeldout:
    """How many samples are nearer to the training set than *every* real held-out scan is.

    A copy call needs a score above tau, which a cautious rule puts well above the held-out scores; a sample
    between the two is not called a copy, yet it is nearer to a training scan than any new patient's scan came.
    Were the samples as new as a new patient's scans (exchangeable with the ``n`` held-out scores), each would
    exceed all of them with probability ``1 / (n + 1)``: ``expected``. A share well above that says the generator
    reproduces training anatomy more closely than new patients resemble it, even where it does not copy.

    Attributes:
        share: samples above the highest held-out score (interval over samples, or generated volumes).
        expected: ``1 / (n + 1)``, the share for samples drawn like the held-out scans.
        heldout_max: the highest held-out score.
    """

    share: Fraction
    expected: float
    heldout_max: float

    @property
    def clearly_above_expected(self) -> bool:
        """The share's interval lies above what samples as new as new patients' scans would give."""
        return self.share.low > self.expected

    def describe(self) -> str:
        s = self.share
        return (
            f"{s.count} of {s.total} samples ({s.value:.0%}, 95 % CI {s.low:.0%} to {s.high:.0%}) are nearer to a "
            f"training scan than any real held-out scan is (score above {self.heldout_max:.3f}); samples as new as "
            f"a new patient's scans would give about {self.expected:.0%}."
        )


def beyond_heldout(
    scores: npt.ArrayLike, heldout: npt.ArrayLike, groups: npt.ArrayLike | None = None, seed: int = 0
) -> BeyondHeldout:
    """:class:`BeyondHeldout` for each sample's best score against training (``scores``) and the held-out null
    (each validation scan's best score against training, the same statistic); ``groups`` as in
    :func:`clustered_fraction` when the samples are slices of generated volumes."""
    x, null = np.asarray(scores, dtype=np.float64), np.asarray(heldout, dtype=np.float64)
    if null.size == 0:
        raise MemoScopeError("no held-out scores: scan the study with a validation set first.")
    top = float(null.max())
    flags = x > top
    if groups is not None and len(np.unique(np.asarray(groups))) < flags.size:
        share = clustered_fraction(flags, groups, seed=seed, unit="volumes")
    else:  # each sample its own draw: a binomial count (Wilson), cheap enough for the first page
        count = int(flags.sum())
        low, high = wilson_interval(count, flags.size)
        share = Fraction(count, int(flags.size), count / flags.size, low, high, "wilson")
    return BeyondHeldout(share, 1.0 / (null.size + 1), top)


def empirical_p_values(scores: npt.ArrayLike, null: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """P(null >= score) with the +1 correction: ``(1 + #{null >= s}) / (1 + n)``.

    Args:
        scores: ``(M,)`` observed best correlations (synthetic -> train).
        null: ``(n,)`` the same statistic for real held-out samples (validation -> train).
    """
    null_sorted = np.sort(np.asarray(null, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    at_least = len(null_sorted) - np.searchsorted(null_sorted, s, side="left")
    return np.asarray((1.0 + at_least) / (1.0 + len(null_sorted)), dtype=np.float64)


@dataclass(frozen=True)
class MemorizationMetrics:
    """The paper's two fractions and the false-positive rates the rule implies.

    Attributes:
        memorized: training samples whose nearest synthetic correlation exceeds tau.
        copies: synthetic samples whose nearest training correlation exceeds tau.
        expected_fpr_copy: share of real held-out (validation) samples whose nearest
            training correlation exceeds tau: how often a novel sample is called a copy.
        expected_fpr_memorized: share of training samples whose nearest validation
            correlation exceeds tau (about 1 - percentile/100 under the paper rule).
    """

    threshold: Threshold
    memorized: Fraction
    copies: Fraction
    expected_fpr_copy: float
    expected_fpr_memorized: float


def memorization_metrics(
    threshold: Threshold,
    train_to_synthetic: npt.ArrayLike,
    synthetic_to_train: npt.ArrayLike,
    train_to_val: npt.ArrayLike,
    val_to_train: npt.ArrayLike,
    seed: int = 0,
    train_groups: npt.ArrayLike | None = None,
    synthetic_groups: npt.ArrayLike | None = None,
) -> MemorizationMetrics:
    """Fractions above tau (strictly greater, as in the paper) with intervals and null rates.

    ``train_groups`` (each training scan's patient) and ``synthetic_groups`` (each sample's generated volume, when
    the samples are slices of volumes) make the intervals resample those groups (:func:`clustered_fraction`):
    neighbouring slices of one patient are not independent draws. Without them each scan is its own draw.
    """
    tau = threshold.value

    def fraction(flags: npt.NDArray[np.bool_], groups: npt.ArrayLike | None, seed: int, unit: str) -> Fraction:
        if groups is None:
            return fraction_with_ci(flags, seed=seed)
        return clustered_fraction(flags, groups, seed=seed, unit=unit)

    return MemorizationMetrics(
        threshold=threshold,
        memorized=fraction(is_copy(train_to_synthetic, tau), train_groups, seed, "patients"),
        copies=fraction(is_copy(synthetic_to_train, tau), synthetic_groups, seed + 1, "volumes"),
        expected_fpr_copy=float(np.mean(is_copy(val_to_train, tau))),
        expected_fpr_memorized=float(np.mean(is_copy(train_to_val, tau))),
    )


def count_above(sorted_values: npt.NDArray[np.floating], thresholds: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """How many of ``sorted_values`` are copies (:func:`is_copy`) at each threshold, in O(log n) each (sliders)."""
    return len(sorted_values) - np.searchsorted(sorted_values, np.asarray(thresholds, dtype=np.float64), side="right")


def fraction_above(sorted_values: npt.NDArray[np.floating], thresholds: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Share of ``sorted_values`` strictly above each threshold (see :func:`count_above`)."""
    return count_above(sorted_values, thresholds) / max(len(sorted_values), 1)


def pixel_correlation(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Pearson correlation of two images' voxels (the pixel-space cross-check)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {np.shape(a)} vs {np.shape(b)}")
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denom) if denom > 0 else 0.0


def ssim(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Structural similarity of two images in [-1, 1] intensity (data range 2)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=2.0))
