"""The scale benchmark's set builder (benchmarks/scale_scan.py) at a tiny size: what the scan reads is what the
builder says it wrote."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.scale_scan import SUBJECTS, build_sets
from core.detect.planted import CHANGES
from core.detect.verify import Verifier, VerifyConfig
from core.io.load import load_set
from core.io.preprocessing import PreprocessSpec


def test_builder_writes_disjoint_distinct_sets_that_the_scan_loads_with_their_truth(tmp_path: Path) -> None:
    sets = build_sets(tmp_path / "sets", 64, dims=2, seed=3)
    spec = PreprocessSpec.for_dims(2)
    loaded = {
        role: load_set(sets.paths[role], spec, role=None, patients=None if role == "synthetic" else "auto")
        for role in ("train", "val", "synthetic")
    }
    assert sets.n == {"train": 64, "val": 16, "synthetic": 16}
    for role, images in loaded.items():  # the builder's order and IDs are the scan's
        assert images.ids == sets.ids[role]
    for role in ("train", "val"):  # patients come from the folders, as the builder named them
        grouping = loaded[role].grouping
        assert grouping is not None and grouping.rule == "folder" and not grouping.doubtful
        assert loaded[role].patient_ids == sets.patients[role]
        assert grouping.patients == len(set(sets.patients[role])) > 1

    # patients are disjoint across training, validation and the unseen synthetic images; no training subject is
    # held out (validation and unseen patients are different patients of the same held-out subjects)
    copy = sets.is_copy
    unseen = [p for p, c in zip(sets.patients["synthetic"], copy, strict=True) if not c]
    unseen_subjects = {s for s, c in zip(sets.subjects["synthetic"], copy, strict=True) if not c}
    patients = [set(sets.patients["train"]), set(sets.patients["val"]), set(unseen)]
    subjects = [set(sets.subjects["train"]), set(sets.subjects["val"]), unseen_subjects]
    drawn_from = [set(SUBJECTS[role]) for role in ("train", "val", "synthetic")]  # what each role may draw from
    for a in range(3):
        assert subjects[a] <= drawn_from[a]
        for b in range(a + 1, 3):
            assert not patients[a] & patients[b]
    assert not drawn_from[0] & (drawn_from[1] | drawn_from[2])
    assert sorted(np.asarray(sets.kind)[copy].tolist()) == sorted(CHANGES)  # one copy per change at this size

    # no two images are the same image, but for an exact copy and its source
    digest = {
        (role, i): hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
        for role, images in loaded.items()
        for i, x in enumerate(images.images)
    }
    repeated = Counter(digest.values())
    exact = [i for i, k in enumerate(sets.kind) if k == "exact"]
    assert exact and all(digest[("synthetic", i)] == digest[("train", sets.source[i])] for i in exact)
    assert sorted(n for n in repeated.values() if n > 1) == [2] * len(exact)

    # each copy's best-aligned training image (the scan's verified score, on a coarser search of rotations and zooms
    # to be quick) is the source the builder recorded
    rows = np.flatnonzero(copy)
    train = np.asarray(loaded["train"].images)
    candidates = np.tile(np.arange(len(train)), (len(rows), 1))
    quick = VerifyConfig(max_angle=4.0, angle_step=4.0, max_scale=0.05)
    scores = Verifier(train.shape[2:], quick).score(np.asarray(loaded["synthetic"].images)[rows], train, candidates)[0]
    assert scores.argmax(axis=1).tolist() == [sets.source[i] for i in rows]
    assert all(sets.source_id(i) == sets.ids["train"][sets.source[i]] for i in rows)
    assert all(sets.patients["synthetic"][i] == f"copy-of-{sets.patients['train'][sets.source[i]]}" for i in rows)


def test_queries_set_the_validation_and_synthetic_sizes(tmp_path: Path) -> None:
    """``--search-only --queries N``: the training set at full size, N validation and N synthetic images, one copy of
    each change among them."""
    sets = build_sets(tmp_path / "arrays", 64, dims=2, seed=3, files=False, queries=12)
    assert sets.n == {"train": 64, "val": 12, "synthetic": 12}
    assert sorted(np.asarray(sets.kind)[sets.is_copy].tolist()) == sorted(CHANGES)
    assert np.load(sets.paths["synthetic"], mmap_mode="r").shape[0] == 12
