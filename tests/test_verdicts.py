"""Verdict store: replacement is audited, the audit is append-only, concurrent and killed writers lose nothing."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from core.common.errors import MemoScopeError
from core.study import verdicts
from core.study.results import PairRef
from core.study.store import DB_NAME, open_study
from tests.helpers import wait_until


def _ref(synthetic_id: str, train_id: str, scan_id: str = "scan-1") -> PairRef:
    return PairRef(synthetic_id, train_id, scan_id, f"h-{synthetic_id}", f"h-{train_id}")


def _writer(study: str, reviewer: str, n: int) -> None:
    for i in range(n):
        verdicts.record(
            study,
            reviewer,
            _ref(f"s{i:03d}", f"t{i % 7}"),
            ("copy", "not_copy", "unsure")[i % 3],
            note=f"{reviewer} {i}",
        )


def _endless_writer(study: str) -> None:
    i = 0
    while True:
        verdicts.record(study, "killed", _ref(f"s{i % 50:03d}", "t0"), ("copy", "not_copy")[i % 2], note=str(i))
        i += 1


def test_a_replaced_verdict_is_kept_in_the_audit(tmp_path: Path) -> None:
    study = open_study(tmp_path / "s").path
    verdicts.record(study, "ana", _ref("s1", "t1"), "copy", "same folds")
    verdicts.record(study, "ana", _ref("s1", "t1"), "not_copy", "looked again")
    (current,) = verdicts.decisions(study)
    assert (current.verdict, current.note) == ("not_copy", "looked again")
    trail = verdicts.audit_trail(study)
    assert [(t["verdict"], t["replaced_verdict"], t["replaced_note"]) for t in trail] == [
        ("copy", None, None),
        ("not_copy", "copy", "same folds"),
    ]
    with sqlite3.connect(study / DB_NAME) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET verdict = 'copy'")
    with sqlite3.connect(study / DB_NAME) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit")


def test_bad_input_is_refused(tmp_path: Path) -> None:
    study = open_study(tmp_path / "s").path
    with pytest.raises(MemoScopeError, match="Reviewer name"):
        verdicts.record(study, "  ", _ref("s1", "t1"), "copy")
    with pytest.raises(MemoScopeError, match="must be one of"):
        verdicts.record(study, "ana", _ref("s1", "t1"), "maybe")
    assert verdicts.decisions(study) == [] and verdicts.audit_trail(study) == []


@pytest.mark.slow
def test_concurrent_reviewers_in_separate_processes_lose_nothing(tmp_path: Path) -> None:
    study = str(open_study(tmp_path / "s").path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(study, f"r{k}", 40)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(verdicts.decisions(study)) == 160
    assert len(verdicts.audit_trail(study)) == 160
    assert verdicts.reviewers(study) == ["r0", "r1", "r2", "r3"]


def test_a_killed_writer_leaves_a_consistent_database(tmp_path: Path) -> None:
    study = str(open_study(tmp_path / "s").path)
    process = mp.get_context("spawn").Process(target=_endless_writer, args=(study,))
    process.start()
    wait_until(lambda: len(verdicts.audit_trail(study)) >= 30, 60, "30 verdicts written", interval=0.05, fail=False)
    os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
    process.join(10)
    with sqlite3.connect(Path(study) / DB_NAME) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    trail = verdicts.audit_trail(study)
    current = verdicts.decisions(study)
    # every current verdict is the last audit entry for its pair: the two writes landed together
    last = {}
    for entry in trail:
        last[(entry["synthetic_id"], entry["train_id"])] = (entry["verdict"], entry["note"])
    assert {(d.synthetic_id, d.train_id): (d.verdict, d.note) for d in current} == last
    verdicts.record(study, "after", _ref("s1", "t1"), "copy")  # still writable


def test_blinded_sample_is_stratified_seeded_and_shuffled() -> None:
    keys = [(f"s{i}", f"t{i}") for i in range(100)]
    sims = [i / 100 for i in range(100)]
    sample = verdicts.blinded_sample(keys, sims, 10, seed=3)
    assert sample == verdicts.blinded_sample(keys, sims, 10, seed=3)
    assert sample != verdicts.blinded_sample(keys, sims, 10, seed=4)
    strata = sorted(int(s[1:]) // 10 for s, _ in sample)
    assert strata == list(range(10))  # one from each tenth of the similarity range
    assert [int(s[1:]) for s, _ in sample] != sorted(int(s[1:]) for s, _ in sample)


def test_agreement_against_hand_computed_values() -> None:
    # 10 pairs: both copy 4, both not 3, a copy / b not 2, a not / b copy 1, plus one unsure
    a, b = {}, {}
    labels = (
        [("copy", "copy")] * 4
        + [("not_copy", "not_copy")] * 3
        + [("copy", "not_copy")] * 2
        + [("not_copy", "copy")]
        + [("unsure", "copy")]
    )
    for i, (x, y) in enumerate(labels):
        a[(f"s{i}", "t")] = x
        b[(f"s{i}", "t")] = y
    result = verdicts.agreement(a, b)
    assert result.n == 10 and result.excluded_unsure == 1
    assert result.matrix == [[3, 1], [2, 4]]
    assert result.accuracy == pytest.approx(0.7)
    # p_o = 0.7; p_e = 0.4 * 0.5 + 0.6 * 0.5 = 0.5; kappa = 0.2 / 0.5
    assert result.kappa == pytest.approx(0.4)


def test_precision_recall_by_threshold() -> None:
    sims = [0.9, 0.8, 0.7, 0.6]
    labels = [True, False, True, False]
    pr = verdicts.precision_recall(sims, labels, [0.65, 0.85, 0.95])
    assert pr["precision"][0] == pytest.approx(2 / 3) and pr["recall"][0] == pytest.approx(1.0)
    assert pr["precision"][1] == 1.0 and pr["recall"][1] == 0.5
    assert np.isnan(pr["precision"][2]) and pr["recall"][2] == 0.0


def test_the_audit_refuses_replace_explicit_ids_and_backdating(tmp_path: Path) -> None:
    study = open_study(tmp_path / "s").path
    verdicts.record(study, "ana", _ref("s1", "t1"), "copy")
    columns = "(id, at, reviewer, synthetic_id, train_id, mode, verdict, note)"
    with sqlite3.connect(study / DB_NAME) as db:
        with pytest.raises(sqlite3.DatabaseError, match="no explicit ids"):
            db.execute(
                f"INSERT OR REPLACE INTO audit {columns} VALUES (1, '2099-01-01', 'eve', 's1', 't1', "
                "'open', 'not_copy', '')"
            )
        with pytest.raises(sqlite3.DatabaseError, match="backdated"):
            db.execute(
                "INSERT INTO audit (at, reviewer, synthetic_id, train_id, mode, verdict, note) VALUES "
                "('2000-01-01T00:00:00+00:00', 'eve', 's1', 't1', 'open', 'not_copy', '')"
            )
    assert [d.verdict for d in verdicts.decisions(study)] == ["copy"] and verdicts.verify_audit(study).ok


def test_an_edit_behind_the_triggers_breaks_the_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Someone with a SQLite shell drops the triggers and rewrites a verdict: verify-audit and the CLI say so."""
    from core.cli import main

    study = open_study(tmp_path / "s").path
    for verdict in ("copy", "not_copy", "copy"):
        verdicts.record(study, "ana", _ref("s1", "t1"), verdict)
    assert main(["verify-audit", "--study", str(study)]) == 0 and "intact (3 rows" in capsys.readouterr().out
    with sqlite3.connect(study / DB_NAME) as db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET verdict = 'not_copy' WHERE id = 3")
    check = verdicts.verify_audit(study)
    assert not check.ok and "row 3: its content was changed" in check.problems[0]
    assert main(["verify-audit", "--study", str(study)]) == 2 and "failed verification" in capsys.readouterr().err


def test_verdicts_on_other_images_are_stale_not_counted(tmp_path: Path) -> None:
    class Scan:  # the two methods decisions() uses, for a scan whose synthetic s2 changed content
        def pair_ref(self, synthetic_id: str, train_id: str) -> PairRef:
            changed = "-new" if synthetic_id == "s2" else ""
            return PairRef(synthetic_id, train_id, "scan-2", f"h-{synthetic_id}{changed}", f"h-{train_id}")

    study = open_study(tmp_path / "s").path
    verdicts.record(study, "ana", _ref("s1", "t1"), "copy")
    verdicts.record(study, "ana", _ref("s2", "t1"), "copy")
    scan = Scan()
    assert [d.synthetic_id for d in verdicts.decisions(study, scan=scan)] == ["s1"]  # type: ignore[arg-type]
    assert [d.synthetic_id for d in verdicts.stale_decisions(study, scan)] == ["s2"]  # type: ignore[arg-type]
    assert verdicts.by_reviewer(study, "open", scan) == {"ana": {("s1", "t1"): "copy"}}  # type: ignore[arg-type]


def test_a_saved_threshold_belongs_to_its_scan_and_keeps_its_history(tmp_path: Path) -> None:
    from core.detect.metrics import Threshold, ThresholdRule

    class Scan:
        def __init__(self, scan_id: str) -> None:
            threshold = Threshold(ThresholdRule.PAPER, 95.0, 0.9, 100)
            self.summary = type("S", (), {"scan_id": scan_id, "threshold": threshold})()

    study = open_study(tmp_path / "s").path
    first, rescan = Scan("scan-1"), Scan("scan-2")
    assert verdicts.study_threshold(study, first).set_by is None  # the scan's until someone saves one
    verdicts.save_threshold(study, "ana", first, Threshold(ThresholdRule.HELDOUT, 85.0, 0.88, 0), "stricter FPR")
    verdicts.save_threshold(study, "bo", first, Threshold(ThresholdRule.FIXED, None, 0.93, 0))
    current = verdicts.study_threshold(study, first)
    assert (current.value, current.set_by, current.rule) == (0.93, "bo", "fixed") and "saved by bo" in current.label
    assert verdicts.study_threshold(study, rescan).value == 0.9  # a rescan starts from its own calibration
    assert [r["set_by"] for r in verdicts.threshold_history(study)] == ["ana", "bo"]
    with pytest.raises(MemoScopeError, match=r"\[-1, 1\]"):
        verdicts.save_threshold(study, "bo", first, Threshold(ThresholdRule.FIXED, None, float("nan"), 0))
    with sqlite3.connect(study / DB_NAME) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE thresholds SET value = 0.5")


def test_reading_a_study_writes_nothing_beside_it(tmp_path: Path) -> None:
    """Reading verdicts, the audit and thresholds leaves the folder as it was, even a read-only one.

    (A WAL database would make every reader create -wal/-shm files; CI caught that on the committed demo.)
    """
    study = open_study(tmp_path / "s").path
    verdicts.record(study, "ana", _ref("s1", "t1"), "copy")
    before = sorted(p.name for p in study.iterdir())
    assert not [name for name in before if name.endswith(("-wal", "-shm", "-journal"))]
    study.chmod(0o555)
    try:
        assert [d.verdict for d in verdicts.decisions(study)] == ["copy"]
        assert verdicts.verify_audit(study).ok
        assert verdicts.threshold_history(study) == []
    finally:
        study.chmod(0o755)
    assert sorted(p.name for p in study.iterdir()) == before


def test_removing_the_newest_rows_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows deleted from the end (after dropping the triggers) leave a chain intact as far as it goes: the head kept
    beside the database (audit-head.json) shows that it went further. Deleting that file too shows as well."""
    from core.cli import main

    study = open_study(tmp_path / "s").path
    for i, verdict in enumerate(("copy", "not_copy", "copy", "unsure")):
        verdicts.record(study, "ana", _ref(f"s{i}", "t1"), verdict)
    assert verdicts.verify_audit(study).anchored and verdicts.verify_audit(study).ok
    with sqlite3.connect(study / DB_NAME) as db:
        db.execute("DROP TRIGGER audit_no_delete")
        db.execute("DELETE FROM audit WHERE id > 2")
    check = verdicts.verify_audit(study)
    assert (
        not check.ok
        and "records 4 chained rows" in check.problems[0]
        and "newest rows were removed" in check.problems[0]
    )
    assert main(["verify-audit", "--study", str(study)]) == 2 and "newest rows were removed" in capsys.readouterr().err
    (study / verdicts.AUDIT_HEAD).unlink()
    assert "no audit-head.json" in verdicts.verify_audit(study).problems[0]
    assert main(["upgrade-study", "--study", str(study)]) == 2  # not a scanned study: nothing is blessed
    assert not verdicts.verify_audit(study).ok


def test_an_older_trail_is_anchored_at_the_users_word(tmp_path: Path) -> None:
    study = open_study(tmp_path / "s").path
    for verdict in ("copy", "not_copy"):
        verdicts.record(study, "ana", _ref("s1", "t1"), verdict)
    (study / verdicts.AUDIT_HEAD).unlink()  # as MemoScope before the anchor left it
    assert not verdicts.verify_audit(study).ok
    assert verdicts.anchor_audit(study).ok and verdicts.verify_audit(study).anchored
    verdicts.record(study, "ana", _ref("s2", "t1"), "copy")
    assert verdicts.verify_audit(study).ok


def test_verify_audit_on_a_missing_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import main

    assert main(["verify-audit", "--study", str(tmp_path / "nowhere")]) == 2
    assert "no such study folder" in capsys.readouterr().err
