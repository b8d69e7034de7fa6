"""Threshold rules, fractions with intervals, p-values and pixel checks, against hand values."""

from __future__ import annotations

import numpy as np
import pytest

from core.common.errors import MemoScopeError
from core.detect.metrics import (
    calibrate,
    empirical_p_values,
    fraction_above,
    fraction_with_ci,
    memorization_metrics,
    parse_rule,
    pixel_correlation,
    ssim,
    wilson_interval,
)


def test_paper_rule_is_percentile_of_train_to_val() -> None:
    train_to_val = np.linspace(0, 1, 101)
    tau = calibrate("paper", train_to_val, np.zeros(40), 95.0)
    assert tau.value == pytest.approx(0.95) and tau.null_size == 101


def test_heldout_rule_uses_val_to_train() -> None:
    tau = calibrate("heldout", np.zeros(5), np.linspace(0, 1, 21), 90.0)
    assert tau.value == pytest.approx(0.9)


def test_small_validation_set_is_refused_with_a_hint() -> None:
    with pytest.raises(MemoScopeError, match="needs at least 20"):
        calibrate("paper", np.zeros(100), np.zeros(10), 95.0)


@pytest.mark.parametrize("text,expected", [("paper", ("paper", None)), ("fixed:0.93", ("fixed", 0.93))])
def test_parse_rule(text: str, expected: tuple) -> None:
    assert parse_rule(text) == expected


def test_parse_rule_rejects_bad_value() -> None:
    with pytest.raises(MemoScopeError):
        parse_rule("fixed:two")


def test_fractions_and_false_positive_rates() -> None:
    tau = calibrate("fixed", [], [], fixed=0.5)
    m = memorization_metrics(tau, [0.6, 0.4, 0.9, 0.5], [0.7, 0.2], [0.1, 0.55, 0.2, 0.3], [0.6, 0.1, 0.2, 0.3, 0.4])
    assert (m.memorized.count, m.memorized.total) == (2, 4)  # 0.5 is not above 0.5
    assert m.copies.value == 0.5
    assert m.expected_fpr_copy == pytest.approx(0.2) and m.expected_fpr_memorized == pytest.approx(0.25)


def test_bootstrap_interval_contains_value_and_is_reproducible() -> None:
    flags = np.r_[np.ones(30), np.zeros(70)]
    a, b = fraction_with_ci(flags, seed=3), fraction_with_ci(flags, seed=3)
    assert a == b and a.low < 0.3 < a.high and a.method == "percentile bootstrap"
    assert 0.18 < a.low < 0.24 and 0.36 < a.high < 0.42  # binomial SE 0.046


def test_degenerate_fraction_uses_wilson() -> None:
    f = fraction_with_ci(np.zeros(20, bool))
    assert f.value == 0 and f.low == 0 and f.high == pytest.approx(wilson_interval(0, 20)[1]) and f.high > 0.1


def test_empirical_p_values() -> None:
    null = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(empirical_p_values([0.35, 0.5, 0.0], null), [2 / 5, 1 / 5, 5 / 5])


def test_fraction_above_for_sliders() -> None:
    values = np.sort(np.array([0.1, 0.5, 0.5, 0.9]))
    np.testing.assert_allclose(fraction_above(values, [0.0, 0.5, 0.95]), [1.0, 0.25, 0.0])


def test_pixel_checks() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (16, 16))
    assert pixel_correlation(a, 0.5 * a + 0.1) == pytest.approx(1.0)
    assert ssim(a, a) == pytest.approx(1.0)
    assert abs(pixel_correlation(a, rng.uniform(-1, 1, (16, 16)))) < 0.3


def test_ucb_rule_is_the_order_statistic_above_the_percentile_with_95_percent_confidence() -> None:
    from scipy import stats

    from core.detect.metrics import ThresholdRule, min_null_size, ucb_order_statistic

    assert min_null_size(95.0, ThresholdRule.HELDOUT_UCB) == 59  # 0.95**59 < 0.05 <= 0.95**58
    assert ucb_order_statistic(58, 95.0) is None and ucb_order_statistic(59, 95.0) == 59
    for n in (59, 100, 1000):
        r = ucb_order_statistic(n, 95.0)
        assert r is not None
        # P(X_(r) >= q95) = P(Binomial(n, .95) <= r - 1) >= 0.95, and r is the smallest such rank
        assert stats.binom.cdf(r - 1, n, 0.95) >= 0.95 > stats.binom.cdf(r - 2, n, 0.95)
    null = np.linspace(0, 1, 100)
    tau = calibrate(ThresholdRule.HELDOUT_UCB, np.zeros(3), null, 95.0)
    assert tau.value == pytest.approx(null[98])
    assert tau.value > calibrate(ThresholdRule.HELDOUT, np.zeros(3), null, 95.0).value
    with pytest.raises(MemoScopeError, match="at least 59"):
        calibrate(ThresholdRule.HELDOUT_UCB, np.zeros(3), null[:40], 95.0)


def test_ucb_threshold_holds_its_false_positive_rate_by_simulation() -> None:
    """Over many null samples, the heldout-ucb tau leaves more than 5 % of new scans above it only ~5 % of the time."""
    from core.detect.metrics import ThresholdRule

    rng = np.random.default_rng(0)
    for rule, n, low, high in ((ThresholdRule.HELDOUT_UCB, 200, 0.0, 0.07), (ThresholdRule.HELDOUT, 200, 0.3, 0.7)):
        exceed = [
            np.mean(rng.normal(size=4000) > calibrate(rule, [0], rng.normal(size=n), 95.0).value) for _ in range(400)
        ]
        # ucb: FPR above 5 % in at most ~1 - confidence of studies; the plain percentile: in about half
        assert low <= np.mean(np.array(exceed) > 0.05) <= high, rule


def _patients_null(rng: np.random.Generator, patients: int, scans: int) -> tuple[np.ndarray, list[int]]:
    """Null scores with a patient effect (Fisher z: between-patient sd 0.25, within 0.1), and their patients."""
    z = rng.normal(0.0, 0.25, patients)[:, None] + rng.normal(0.0, 0.1, (patients, scans))
    return np.tanh(0.4 + z).ravel(), np.repeat(np.arange(patients), scans).tolist()


def test_patient_rule_holds_its_false_positive_rate_on_new_patients_where_the_percentile_does_not() -> None:
    """Scans of one patient are not independent draws: calibrated on 3 or 5 patients, the plain percentile leaves
    well over 5 % of a new patient's scans above tau on average; the heldout-patient bound stays at or below 5 %."""
    from core.detect.metrics import ThresholdRule

    rng = np.random.default_rng(0)
    for patients in (3, 5):
        rates: dict[ThresholdRule, list[float]] = {ThresholdRule.HELDOUT: [], ThresholdRule.HELDOUT_PATIENT: []}
        for _ in range(150):
            null, labels = _patients_null(rng, patients, 20)
            new, _ = _patients_null(rng, 200, 5)
            for rule, found in rates.items():
                found.append(float(np.mean(new > calibrate(rule, [0], null, 95.0, val_patients=labels).value)))
        assert np.mean(rates[ThresholdRule.HELDOUT_PATIENT]) <= 0.055, patients
        assert np.mean(rates[ThresholdRule.HELDOUT]) >= 0.09, patients


def test_patient_rule_holds_its_rate_when_the_scores_upper_tail_is_heavier_than_normal() -> None:
    """A best-of-many score has a Gumbel-like upper tail, heavier than the normal the patient model assumes: with
    300 validation patients the model alone leaves over 6 % of new patients' scans above tau; the rule, which also
    counts the null's own upper tail (each patient weighing the same), stays at 5 % (within 0.6 points over 100
    draws of 4,000 new scans each: a binomial standard error of about 0.03 points)."""
    from core.detect.metrics import ThresholdRule, patient_bound, patient_percentile

    def draw(rng: np.random.Generator, patients: int, scans: int) -> tuple[np.ndarray, list[int]]:
        z = rng.normal(0.0, 0.05, patients)[:, None] + rng.gumbel(0.0, 0.12, (patients, scans))
        return np.tanh(0.4 + z).ravel(), np.repeat(np.arange(patients), scans).tolist()

    rng = np.random.default_rng(0)
    model, rule = [], []
    for _ in range(100):
        null, labels = draw(rng, 300, 8)
        new, _ = draw(rng, 500, 8)
        model.append(float(np.mean(new > patient_bound(null, labels, 95.0))))
        tau = calibrate(ThresholdRule.HELDOUT_PATIENT, [0], null, 95.0, val_patients=labels).value
        assert tau == max(patient_bound(null, labels, 95.0), patient_percentile(null, labels, 95.0))
        rule.append(float(np.mean(new > tau)))
    assert np.mean(model) > 0.06
    assert abs(np.mean(rule) - 0.05) < 0.006


def test_patient_percentile_weighs_each_patient_the_same() -> None:
    from core.detect.metrics import patient_percentile

    # patient a: one scan at 0.9; patient b: 9 scans at 0.1..0.5. Per scan, 0.9 is a tenth of the scans; per
    # patient it is half the weight: a 60th percentile must lie at 0.9 by patient (above it: none), not below
    null = [0.9, *np.linspace(0.1, 0.5, 9)]
    labels = ["a"] + ["b"] * 9
    assert patient_percentile(null, labels, 60.0) == pytest.approx(0.9)
    assert patient_percentile(null, labels, 45.0) == pytest.approx(0.5)  # above 0.5: a's half of the weight (< 0.55)
    assert patient_percentile(null, list("abcdefghij"), 80.0) == pytest.approx(sorted(null)[-3])


def test_patient_rule_widens_with_fewer_patients_and_refuses_one() -> None:
    from core.detect.metrics import ThresholdRule, patient_bound

    rng = np.random.default_rng(1)
    few = np.median([patient_bound(*_patients_null(rng, 2, 20), 95.0) for _ in range(50)])
    many = np.median([patient_bound(*_patients_null(rng, 20, 20), 95.0) for _ in range(50)])
    assert few > many  # 2 patients say little about the next one: t with 1 degree of freedom
    null, labels = _patients_null(rng, 4, 10)
    assert patient_bound(null, labels, 99.0) > patient_bound(null, labels, 95.0) > patient_bound(null, labels, 50.0)
    with pytest.raises(MemoScopeError, match="at least 2 patients; there are 1"):
        calibrate(ThresholdRule.HELDOUT_PATIENT, [0], null, 95.0, val_patients=[0] * len(null))
    with pytest.raises(MemoScopeError, match="needs the patient of each validation scan"):
        calibrate(ThresholdRule.HELDOUT_PATIENT, [0], null, 95.0)
    # every patient the same: the bound is the scans' spread (no between-patient part), above every null score
    flat = np.tanh(0.3 + np.tile(np.linspace(-0.1, 0.1, 10), 3))
    tau = patient_bound(flat, np.repeat([0, 1, 2], 10).tolist(), 95.0)
    assert flat.max() < tau < np.tanh(0.3 + 3 * 0.1)


def test_crossfit_fpr_leaves_each_patient_out() -> None:
    from core.detect.metrics import ThresholdRule, crossfit_fpr

    # patient a scores low, patient b high: calibrated on a, b's scans are all above tau, and vice versa none
    null = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.85, 0.9, 0.95])
    fpr = crossfit_fpr(null, ["a"] * 4 + ["b"] * 4, 50.0)
    assert fpr is not None and (fpr.count, fpr.total) == (4, 8) and fpr.low < 0.5 < fpr.high
    assert "2 patients" in fpr.method
    assert crossfit_fpr(null, ["a"] * 8, 50.0) is None  # one patient: no transfer to measure
    # the patient bound needs two patients in every fold: three patients at least
    assert crossfit_fpr(null, ["a"] * 4 + ["b"] * 4, 50.0, ThresholdRule.HELDOUT_PATIENT) is None
    three = crossfit_fpr(null, ["a"] * 3 + ["b"] * 3 + ["c"] * 2, 95.0, ThresholdRule.HELDOUT_PATIENT)
    assert three is not None and three.total == 8 and "3 patients" in three.method


def test_clustered_fraction_resamples_patients_not_slices() -> None:
    from core.detect.metrics import MIN_RESAMPLED_GROUPS, any_per_group, clustered_fraction

    rng = np.random.default_rng(0)
    # 20 patients of 30 slices each; a patient's slices are all memorized or none (perfectly correlated)
    patients = np.repeat(np.arange(20), 30)
    flags = np.repeat(rng.random(20) < 0.4, 30)
    by_slice = fraction_with_ci(flags, seed=0)
    by_patient = clustered_fraction(flags, patients, seed=0)
    assert by_patient.value == by_slice.value and "bootstrap over 20 patients" in by_patient.method
    assert (by_patient.high - by_patient.low) > 2.5 * (by_slice.high - by_slice.low)
    assert by_patient.low <= by_patient.value <= by_patient.high
    # one sample per group is the plain bootstrap
    assert clustered_fraction(flags, np.arange(flags.size), seed=0) == by_slice
    # too few patients: Wilson with the patients as the sample size, around the observed share
    few = clustered_fraction(flags[: 3 * 30], patients[: 3 * 30], seed=0)
    assert 3 < MIN_RESAMPLED_GROUPS and few.method.startswith("wilson with n = 3 patients")
    low, high = wilson_interval(few.value * 3, 3)
    assert (few.low, few.high) == pytest.approx((low, high)) and few.low <= few.value <= few.high
    hit = any_per_group(flags, patients)
    assert hit.count == int(flags.reshape(20, 30)[:, 0].sum()) and hit.total == 20


def test_memorization_intervals_resample_the_groups_they_are_given() -> None:
    from core.detect.metrics import Threshold, ThresholdRule, clustered_fraction

    rng = np.random.default_rng(1)
    patients = np.repeat([f"p{i}" for i in range(12)], 25)  # 12 training patients of 25 slices
    train_to_synthetic = np.repeat(rng.random(12), 25) + rng.normal(0, 0.01, 300)
    synthetic_to_train = rng.random(40)
    volumes = np.repeat([f"v{i}" for i in range(8)], 5)  # 40 slices of 8 generated volumes
    tau = Threshold(ThresholdRule.FIXED, None, 0.5, 0)
    null = rng.random(30)
    plain = memorization_metrics(tau, train_to_synthetic, synthetic_to_train, null, null, seed=3)
    grouped = memorization_metrics(
        tau, train_to_synthetic, synthetic_to_train, null, null, seed=3, train_groups=patients, synthetic_groups=volumes
    )
    assert plain.memorized == fraction_with_ci(train_to_synthetic > 0.5, seed=3)
    assert grouped.memorized == clustered_fraction(train_to_synthetic > 0.5, patients, seed=3)
    assert grouped.memorized.method == "bootstrap over 12 patients"
    assert grouped.memorized.high - grouped.memorized.low > 2 * (plain.memorized.high - plain.memorized.low)
    assert grouped.copies.method.startswith("wilson with n = 8 volumes")  # too few volumes to resample
    assert grouped.memorized.value == plain.memorized.value and grouped.copies.count == plain.copies.count
    # samples that are each their own draw keep the plain interval
    own = memorization_metrics(
        tau, train_to_synthetic, synthetic_to_train, null, null, seed=3, synthetic_groups=[str(i) for i in range(40)]
    )
    assert own.copies == plain.copies


def test_beyond_heldout_expects_one_in_n_plus_one_of_new_samples() -> None:
    from core.detect.metrics import beyond_heldout

    rng = np.random.default_rng(4)
    # samples drawn like the held-out scores: on average 1 / (n + 1) lie above all n of them
    shares = [beyond_heldout(rng.normal(size=200), rng.normal(size=9), seed=i).share.value for i in range(300)]
    assert np.mean(shares) == pytest.approx(1 / 10, abs=0.02)
    new = beyond_heldout(rng.normal(size=200), rng.normal(size=9))
    assert new.expected == pytest.approx(0.1) and new.heldout_max <= 5
    # samples shifted towards training lie above far more often, and the interval says so
    near = beyond_heldout(rng.normal(2.0, 1.0, size=200), rng.normal(size=9))
    assert near.clearly_above_expected and "samples as new as a new patient's scans would give about 10%" in (
        near.describe()
    )
    # slices of generated volumes: the interval resamples volumes
    grouped = beyond_heldout(rng.normal(2.0, 1.0, size=40), rng.normal(size=9), np.repeat(np.arange(4), 10))
    assert "4 volumes" in grouped.share.method
    with pytest.raises(MemoScopeError, match="held-out"):
        beyond_heldout([0.5], [])


def test_every_threshold_rule_is_one_row_of_the_table_and_behaves_as_it_says() -> None:
    """Adding a rule is a member of ThresholdRule and a row of RULES: each row here sets tau from the null it names,
    refuses a null below its minimum, and appears in the help the CLI and the Calibrate page show."""
    from core.detect.metrics import RULES, ThresholdRule, calibrate, min_null_size, rule_help

    assert set(RULES) == set(ThresholdRule), "a rule without its row (or a row without its rule)"
    rng = np.random.default_rng(0)
    train_to_val, val_to_train = rng.uniform(0.0, 0.5, 200), rng.uniform(0.5, 0.9, 200)
    patients = [f"p{i % 8}" for i in range(200)]
    for rule, spec in RULES.items():
        assert f"{rule}: {spec.summary}" in rule_help() and spec.meaning == rule.meaning
        if spec.null is None:
            assert calibrate(rule, train_to_val, val_to_train, fixed=0.42).value == 0.42
            continue
        tau = calibrate(rule, train_to_val, val_to_train, 95.0, val_patients=patients)
        assert tau.rule == rule and tau.null_size == 200
        inside = (0.0, 0.5) if spec.null == "train_to_val" else (0.5, 1.0)  # tau is set on the null it names
        assert inside[0] <= tau.value <= inside[1], (rule, tau.value)
        assert rule.uses_heldout_null == (spec.null == "val_to_train")
        needed = min_null_size(95.0, rule)
        small = needed - 1
        if small >= 1:
            with pytest.raises(MemoScopeError, match="needs at least"):
                calibrate(rule, train_to_val[:small], val_to_train[:small], 95.0, val_patients=patients[:small])
