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
    assert result.auroc_low is not None and result.auroc_high is not None  # 10 patients a side: an interval
    assert 0.65 < result.auroc < 0.9 and result.auroc_low < result.auroc < result.auroc_high
    assert (result.n_train_patients, result.n_heldout_patients) == (10, 10) and len(by_patient) == 20
    assert not result.exact and result.p_value < 0.01 and result.leak_shown  # C(20, 10) > 2000: sampled
    assert "The weights leak who was in training" in result.sentence()
    same, _ = membership_test(others[:30], patients_a[:30], others[30:], patients_b[30:], config)
    # 5 patients a side: no interval, an exact p-value over the C(10, 5) = 252 arrangements
    assert same.auroc_low is None and same.exact and same.p_value > 0.05 and not same.leak_shown
    assert "No membership leak was shown" in same.sentence() and "weak evidence, not proof" in same.sentence()
    # patients move as groups: 2 + 2 perfectly separated patients reach only p = 1 / C(4, 2), and say so
    tiny, _ = membership_test([5.0, 6, 7, 8], ["a", "a", "b", "b"], [0.0, 1, 2, 3], ["c", "c", "d", "d"], config)
    assert tiny.auroc == 1.0 and tiny.p_value == pytest.approx(1 / 6) and tiny.exact
    assert "cannot show a leak here" in tiny.sentence()
    with pytest.raises(MemoScopeError, match="both in training and held out"):
        membership_test(members, patients_a, others, patients_a, config)


@pytest.mark.slow
def test_the_committed_checkpoints_leak_membership_when_over_trained_and_not_when_early() -> None:
    """Known answers through real weights: the demo LDM trained 2,000 UNet epochs without augmentation reproduces its
    training slices (FINDINGS.md), so their denoising error is lower than the validation subjects': the AUROC is
    near 1 and the permutation p-value the smallest 3 + 3 subjects allow (1 / C(6, 3) = 0.05); after 25 epochs
    (noise, not anatomy yet) no leak is shown. One timestep (t = 100, among the defaults) and every 4th slice keep
    it to seconds."""
    from core.generative.ldm import load_ldm
    from core.io.load import load_set
    from core.io.preprocessing import PreprocessSpec
    from core.privacy.membership import denoising_errors

    config = MembershipConfig(timesteps=(100,), seed=0)
    found = {}
    for epochs in ("e0025", "e2000"):
        ldm = load_ldm(f"checkpoints/demo-2d-noaug-{epochs}")
        spec = PreprocessSpec.from_dict(ldm.config.preprocessing)
        scores, patients = [], []
        for role in ("train", "val"):
            images = load_set("data/demo/2d/manifest.csv", spec, role=role)
            keep = np.arange(0, len(images), 4)
            errors = denoising_errors(ldm, np.asarray(images.images)[keep], config, "cpu")
            scores.append(-errors.mean(1))
            patients.append([images.patient_ids[i] for i in keep])
        found[epochs], _ = membership_test(scores[0], patients[0], scores[1], patients[1], config)
    over, early = found["e2000"], found["e0025"]
    assert over.auroc >= 0.9 and over.p_value == over.smallest_p == pytest.approx(0.05), over  # 3 + 3 subjects
    assert over.leak_shown and not early.leak_shown and early.p_value > 0.05, early


def test_a_privacy_run_is_refused_while_the_study_is_being_written(tmp_path) -> None:  # noqa: ANN001
    """The privacy tests hold the study as a scan does: started from the app or the command line while a scan (or
    another privacy run) writes the study, they are refused by name before any work, and nothing is written."""
    import shutil
    from pathlib import Path

    from core.study.privacy import PRIVACY, run_privacy
    from core.study.store import open_study

    study = tmp_path / "demo-3d"
    shutil.copytree(Path(__file__).resolve().parents[1] / "studies" / "demo-3d", study)
    (study / PRIVACY).unlink()
    with open_study(study).exclusive("scan"), pytest.raises(MemoScopeError, match="is writing this study"):
        run_privacy(study)
    assert not (study / PRIVACY).exists()
