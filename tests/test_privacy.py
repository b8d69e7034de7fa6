"""Privacy beyond copies: the membership test's statistics and the distribution-level tests, on answers known in
advance."""

from __future__ import annotations

import numpy as np
import pytest

from core.common.errors import MemoScopeError
from core.privacy.distribution import authenticity, ct_test, nearest_record_share
from core.privacy.membership import MembershipConfig, auroc, membership_test, per_patient, tpr_at_fpr


def _embeddings(seed: int = 0) -> dict[str, np.ndarray]:
    """Clustered 32-d embeddings like a detector's (patients' scans near their cluster): training, held-out and a
    second held-out set drawn alike; copies = training rows with a trace of noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, 32))

    def draw(n: int) -> np.ndarray:
        return centres[rng.integers(0, 40, n)] + 0.7 * rng.normal(size=(n, 32))

    train, heldout, fresh = draw(800), draw(400), draw(400)
    copies = train[rng.choice(800, 400)] + 0.01 * rng.normal(size=(400, 32))
    return {"train": train, "heldout": heldout, "fresh": fresh, "copies": copies}


def test_a_generator_that_returns_new_real_scans_passes_and_one_that_returns_training_scans_is_caught() -> None:
    e = _embeddings()
    new = ct_test(e["train"], e["heldout"], e["fresh"])
    copied = ct_test(e["train"], e["heldout"], e["copies"])
    assert abs(new.value) < 3 and new.p_value > 0.01, new  # about N(0, 1) when samples are new scans
    assert copied.value < -10 and copied.p_value < 1e-6, copied  # strongly negative: copying
    assert "copying across the set" in copied.sentence() and "about as far" in new.sentence()
    auth_new, real = authenticity(e["train"], e["heldout"], e["fresh"])
    auth_copied, _ = authenticity(e["train"], e["heldout"], e["copies"])
    assert auth_new.p_value > 0.001 and auth_new.reference == real, auth_new  # as authentic as real new scans
    assert auth_copied.value < 0.05 and auth_copied.p_value < 1e-6
    share_new = nearest_record_share(e["train"], e["heldout"], e["fresh"])
    share_copied = nearest_record_share(e["train"], e["heldout"], e["copies"])
    assert share_new.low <= 0.5 <= share_new.high and share_new.p_value > 0.01, share_new
    # training is subsampled to the held-out size (half of it), so about half the copies' sources are drawn: the
    # copies are nearest to training far more often than one half
    assert share_copied.low > 0.65 and share_copied.p_value < 1e-6, share_copied


def test_ct_refuses_sets_too_small_to_rank() -> None:
    e = _embeddings()
    with pytest.raises(MemoScopeError, match="C_T needs at least 5"):
        ct_test(e["train"], e["heldout"][:3], e["fresh"])


def test_membership_statistics_on_known_scores() -> None:
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0 and auroc([0, 1], [0, 1]) == 0.5
    assert tpr_at_fpr([3, 4, 5], [0, 1, 2], 0.01) == 1.0  # every member above every other
    assert tpr_at_fpr([1, 2, 3], [0, 1, 2, 5], 0.25) == pytest.approx(1 / 3)  # one other may exceed: above 2
    assert tpr_at_fpr([1, 2, 3], [0, 1, 2, 5], 0.0) == 0.0  # none above 5
    ids, means = per_patient([1.0, 3.0, 10.0], ["a", "a", "b"])
    assert ids == ["a", "b"] and means.tolist() == [2.0, 10.0]
    config = MembershipConfig(bootstrap=200)
    rng = np.random.default_rng(0)
    members = rng.normal(1.0, 1.0, 60)
    others = rng.normal(0.0, 1.0, 60)
    patients_a = [f"a{i // 6}" for i in range(60)]
    patients_b = [f"b{i // 6}" for i in range(60)]
    result, by_patient = membership_test(members, patients_a, others, patients_b, config)
    assert 0.65 < result.auroc < 0.9 and result.auroc_low < result.auroc < result.auroc_high
    assert (result.n_train_patients, result.n_heldout_patients) == (10, 10) and len(by_patient) == 20
    assert "better than chance" in result.sentence() and "interval is wide" in result.sentence()  # 10 a side
    same, _ = membership_test(others[:30], patients_a[:30], others[30:], patients_b[30:], config)
    assert same.auroc_low < 0.5 < same.auroc_high and "includes chance" in same.sentence()
    assert "weak evidence, not proof" in same.sentence()
    with pytest.raises(MemoScopeError, match="both in training and held out"):
        membership_test(members, patients_a, others, patients_a, config)
