"""Patient-level resemblance: the nearest training patient over all of that patient's scans, calibrated on
real unseen patients and kept apart from the copy call."""

from __future__ import annotations

import numpy as np
import pytest

from core.detect.metrics import ThresholdRule
from core.detect.resemblance import nearest_patients, patient_resemblance


def _patients(rng: np.random.Generator, names: list[str], per: int, spread: float) -> tuple[np.ndarray, list[str]]:
    """Scans of each patient scattered around that patient's own anatomy (a random centre)."""
    vectors, labels = [], []
    for name in names:
        centre = rng.normal(size=64)
        vectors.append(centre + spread * rng.normal(size=(per, 64)))
        labels += [name] * per
    return np.concatenate(vectors), labels


def test_a_new_scan_of_a_training_patient_resembles_that_patient_and_new_people_do_not() -> None:
    rng = np.random.default_rng(0)
    train, train_patients = _patients(rng, [f"p{i}" for i in range(8)], 12, 0.8)
    val, _ = _patients(rng, [f"v{i}" for i in range(6)], 12, 0.8)
    unseen, _ = _patients(rng, [f"u{i}" for i in range(4)], 12, 0.8)
    centre3 = np.mean(train[np.array(train_patients) == "p3"], axis=0)
    like_p3 = centre3 + 0.8 * rng.normal(size=(10, 64))  # ten new draws of patient p3, none a copy
    synthetic = np.concatenate([like_p3, unseen])
    found = nearest_patients(synthetic, train, train_patients, top=3)
    null = nearest_patients(val, train, train_patients, top=3)
    assert found.patient[:10] == ["p3"] * 10
    result = patient_resemblance(found, null, 95.0, ThresholdRule.HELDOUT, 3)
    flags = found.similarity > result.tau
    assert flags[:10].all()
    assert flags[10:].mean() <= 0.2  # the null percentile is 95 % on 72 scans: sampling noise around 5 %
    assert result.fraction.count == int(flags.sum()) and result.fraction.total == len(synthetic)
    assert result.fraction.low <= result.fraction.value <= result.fraction.high
    assert result.null_size == len(val) and result.null_fraction <= 0.05 + 1 / len(val)


def test_one_matching_scan_weighs_less_than_a_patient_matched_on_several() -> None:
    rng = np.random.default_rng(1)
    train, patients = _patients(rng, ["a", "b"], 6, 3.0)  # scans of one patient far apart (different slices)
    query = train[[0]]  # an exact copy of one of a's scans
    one = nearest_patients(query, train, patients, top=1)
    three = nearest_patients(query, train, patients, top=3)
    assert one.similarity[0] == pytest.approx(1.0, abs=1e-5)
    assert three.similarity[0] < 0.8  # averaged with a's other, unlike scans


def test_results_do_not_depend_on_the_chunk_size() -> None:
    rng = np.random.default_rng(2)
    train, patients = _patients(rng, ["a", "b", "c"], 5, 1.0)
    queries = rng.normal(size=(17, 64))
    whole = nearest_patients(queries, train, patients, chunk_size=1024)
    pieces = nearest_patients(queries, train, patients, chunk_size=4)
    assert whole.patient == pieces.patient
    # other block sizes take other BLAS kernels: float32 sums agree to about 1e-7 of a similarity in [-1, 1]
    np.testing.assert_allclose(whole.similarity, pieces.similarity, rtol=1e-6, atol=1e-6)


def test_the_ucb_rule_falls_back_to_the_percentile_on_a_small_null() -> None:
    rng = np.random.default_rng(3)
    train, patients = _patients(rng, ["a", "b"], 5, 1.0)
    null = nearest_patients(rng.normal(size=(20, 64)), train, patients)
    found = nearest_patients(rng.normal(size=(5, 64)), train, patients)
    result = patient_resemblance(found, null, 95.0, ThresholdRule.HELDOUT_UCB, 3)
    assert result.rule == ThresholdRule.HELDOUT
    assert result.tau == pytest.approx(float(np.percentile(null.similarity, 95)))
