"""A scanned study's results on disk: file names, typed records, the copy rule and the nearest pair, in one place.

Everything a scan writes into a study folder is written here (:func:`write_scan`) and read back
here (:class:`ScanResults`); nobody else knows a file name or a JSON key. ``summary.json``
carries ``schema_version``: an older study gets a clear error and an upgrade command
(:func:`upgrade_study`), a newer one asks for a newer MemoScope.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from core.common.config import Config
from core.common.devices import Precision
from core.common.errors import MemoScopeError
from core.common.provenance import atomic_path, atomic_write_json, sha256_file, sha256_files
from core.common.tables import read_csv, write_csv
from core.detect.diagnostics import CalibrationDiagnostics
from core.detect.metrics import Fraction, MemorizationMetrics, Threshold, ThresholdRule, calibrate, is_copy
from core.detect.record import DetectorConfig
from core.detect.resemblance import PatientResemblance
from core.detect.search import SearchReport
from core.detect.verify import Alignment, MatchMethod, VerifyConfig
from core.io.discover import Role, discover
from core.io.load import SLICE_MARK, SkippedFile
from core.io.patients import PatientGrouping
from core.io.preprocessing import PreprocessSpec
from core.study.store import DB_NAME, anchor_summary, summary_anchor

SCHEMA_VERSION = 2
SUMMARY = "summary.json"
PAIRS = "pairs.csv"
TRAIN_NN = "train_nn.csv"
NEIGHBORS = "neighbors.npz"
PATIENTS = "patients.csv"
EMBEDDINGS = "embeddings"
DETECTOR = "detector"
ROLES = tuple(Role)  # in the order a scan loads them
NOTES = (
    "Intervals resample training patients (memorized) and generated volumes (copies, when the samples are their "
    "slices), otherwise samples, with the threshold held fixed; they omit calibration uncertainty.",
    "expected_fpr_copy is the share of real held-out images above the threshold.",
)


@dataclass(frozen=True)
class InputSet(Config):
    """One input set of a scan: where it came from, its size and content hash, what was skipped.

    ``file_hashes`` (training and synthetic sets): the SHA-256 of each file as scanned, keyed by the file's
    sample ID, so that a release ships exactly what was checked and a verdict stays tied to the images it saw.
    ``patients`` (training and validation sets): the rule that named the patients and what it found (``None`` in
    studies scanned before it was recorded).
    """

    source: str
    n: int
    n_patients: int
    content_hash: str
    skipped: tuple[SkippedFile, ...] = ()
    embeddings_cached: bool = False
    file_hashes: dict[str, str] = field(default_factory=dict)
    patients: PatientGrouping | None = None

    @property
    def patient_rule(self) -> str:
        """How the set's patients were named, for a table: the rule, or ``-`` (synthetic, or an older study)."""
        if self.patients is None:
            return "-"
        return self.patients.label()


@dataclass(frozen=True)
class DetectorRef(Config):
    """The detector a scan used: its folder, content hash, config and kept evaluation, and ``choice``: why this
    detector (empty: given or trained as asked; else the sentence saying why none was trained)."""

    path: str
    hash: str
    config: DetectorConfig
    best_epoch: int
    choice: str = ""


@dataclass(frozen=True)
class ScanSummary(Config):
    """What a scan found and how (``summary.json``).

    Attributes:
        threshold: tau and the rule that calibrated it.
        memorized: training samples whose nearest synthetic sample is a copy at tau.
        copies: synthetic samples whose nearest training sample is a copy at tau.
        expected_fpr_copy: share of real held-out images called copies at tau.
        expected_fpr_memorized: share of training images whose nearest validation image is above tau.
        inputs: ``train``, ``val`` and ``synthetic`` sets.
        preprocessing, slices, k, seed: how the sets were compared.
        detector: the detector used; checkpoint, checkpoint_hash, generations: where the samples came from.
        versions, timings, finished_at, notes: provenance.
        method: ``paper`` (the embedding correlation decides, as in Dar et al.) or ``verified`` (retrieval, then
            alignment and the aligned structure correlation decide; ``verify`` holds its settings). Every
            similarity, threshold and fraction of the scan is on the method's score.
        fpr_unseen: share of real scans of patients the threshold was not calibrated on that are called copies
            (leave-one-patient-out for held-out rules; the validation scans above tau for the paper rule).
        patient_resemblance: synthetic samples whose nearest training *patient* is closer than real unseen
            patients usually are (``patients.csv``; see :mod:`core.detect.resemblance`). A separate finding:
            never part of ``copies``.
        device: where the detector trained and embedded and pairs were verified.
        precision: the forward passes' dtype there (``fp32``, or mixed ``bf16``/``fp16``).
        diagnostics: where tau sits in the synthetic samples' own scores and the gap rule's second opinion on it
            (:mod:`core.detect.diagnostics`), at the scan's tau; ``None`` for scans before it was recorded.
        verification: the preprocessing of the images the verified call, the pixel checks and Review compared
            (the scans' own resolution, up to ``verify.max_size``); ``None``: the same as ``preprocessing``.
        search: how the training set was searched: exact, or an approximate index with its measured recall@1.
        scan_id: this scan's identity (verdicts and releases refer to it).
        files: SHA-256 of each result file the scan wrote; a study whose files differ (an interrupted
            rescan, a hand edit) is refused by :meth:`ScanResults.open`.
    """

    threshold: Threshold
    memorized: Fraction
    copies: Fraction
    expected_fpr_copy: float
    expected_fpr_memorized: float
    inputs: dict[str, InputSet]
    preprocessing: PreprocessSpec
    detector: DetectorRef
    versions: dict[str, str]
    finished_at: str
    slices: str | None = None
    k: int = 5
    seed: int = 0
    checkpoint: str | None = None
    checkpoint_hash: str | list[str] | None = None
    generations: tuple[dict[str, Any], ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = NOTES
    scan_id: str = ""
    files: dict[str, str] = field(default_factory=dict)
    method: MatchMethod = MatchMethod.PAPER
    verify: VerifyConfig | None = None
    fpr_unseen: Fraction | None = None
    patient_resemblance: PatientResemblance | None = None
    device: str = ""
    search: SearchReport | None = None
    precision: Precision = Precision.FP32
    verification: PreprocessSpec | None = None
    diagnostics: CalibrationDiagnostics | None = None
    schema_version: int = SCHEMA_VERSION

    def validate(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise MemoScopeError(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}.")
        missing = set(ROLES) - set(self.inputs)
        if missing:
            raise MemoScopeError(f"inputs: missing set(s) {sorted(missing)}.")
        tau = self.threshold.value
        if not (isinstance(tau, int | float) and math.isfinite(tau) and -1.0 <= tau <= 1.0):
            raise MemoScopeError(f"threshold.value {tau!r} is not a number in [-1, 1]; rescan the study.")

    @property
    def tau(self) -> float:
        return self.threshold.value

    @property
    def compared_spec(self) -> PreprocessSpec:
        """The preprocessing of the images pairs were compared on (and alignments are stated in)."""
        return self.verification or self.preprocessing

    @property
    def metrics(self) -> MemorizationMetrics:
        """The scan's memorization metrics at its own threshold, as one record (stored flat in ``summary.json``,
        the layout every committed study has)."""
        return MemorizationMetrics(
            self.threshold, self.memorized, self.copies, self.expected_fpr_copy, self.expected_fpr_memorized
        )

    def source(self, role: str) -> str:
        """The folder or manifest the ``role`` set was read from."""
        return self.inputs[role].source


@dataclass(frozen=True)
class Pair:
    """A synthetic sample and one of its training neighbours (a row of ``pairs.csv``)."""

    synthetic_id: str
    rank: int
    train_id: str
    patient_id: str
    similarity: float
    p_value: float
    pixel_corr: float
    ssim: float | None
    retrieval: float | None = None
    alignment: Alignment | None = None

    @property
    def nearest(self) -> bool:
        """Whether this is the sample's nearest training scan (the pair every metric is about)."""
        return self.rank == 1

    def is_copy(self, tau: float) -> bool:
        return bool(is_copy(self.similarity, tau))


@dataclass(frozen=True)
class PairRef:
    """A pair as a reviewer judged it: IDs, the scan, and the content hashes of both images."""

    synthetic_id: str
    train_id: str
    scan_id: str
    synthetic_hash: str
    train_hash: str


def image_hash(summary: ScanSummary, role: str, sample_id: str) -> str:
    """The content hash of one scanned image: its file's hash, plus the slice for IDs like ``f.nii.gz#axial042``."""
    file_id, _, part = sample_id.partition(SLICE_MARK)
    digest = summary.inputs[role].file_hashes.get(file_id, "")
    return f"{digest}{SLICE_MARK}{part}" if digest and part else digest


@dataclass(frozen=True)
class TrainRow:
    """A training sample, its nearest synthetic sample and its nearest validation similarity (``train_nn.csv``)."""

    train_id: str
    patient_id: str
    nearest_synthetic_id: str
    similarity: float
    nearest_val_similarity: float


@dataclass(frozen=True)
class Calibration:
    """The four best-correlation arrays of a study, each sorted ascending.

    Attributes:
        train_to_val: each training sample's best correlation to validation (the paper's null).
        val_to_train: each validation sample's best correlation to training (the held-out null).
        train_to_synthetic: each training sample's best correlation to a synthetic sample.
        synthetic_to_train: each synthetic sample's best correlation to training.
    """

    train_to_val: npt.NDArray[np.float64]
    val_to_train: npt.NDArray[np.float64]
    train_to_synthetic: npt.NDArray[np.float64]
    synthetic_to_train: npt.NDArray[np.float64]
    val_groups: npt.NDArray[np.int64] | None = None  # the patient number of each sorted val_to_train score

    def threshold(self, rule: str, percentile: float = 95.0, fixed: float | None = None) -> Threshold:
        kind = ThresholdRule(rule)
        if kind.calibration_patients > 1 and self.val_groups is None:  # a rule that needs the patients
            raise MemoScopeError(
                f"this study was scanned before validation patients were recorded with its scores; the {kind} rule "
                "needs them. Rescan the study (python -m core scan) or choose another rule."
            )
        groups = None if self.val_groups is None else self.val_groups.tolist()
        return calibrate(kind, self.train_to_val, self.val_to_train, percentile, fixed, groups)


PAIR_HEADER = ("synthetic_id", "rank", "train_id", "patient_id", "similarity", "p_value", "is_copy", "pixel_corr")
TRAIN_HEADER = ("train_id", "patient_id", "nearest_synthetic_id", "similarity", "memorized", "nearest_val_similarity")
NEIGHBOR_KEYS = (
    "synthetic_to_train_sim",
    "synthetic_to_train_idx",
    "train_to_synthetic_sim",
    "train_to_synthetic_idx",
    "train_to_val_sim",
    "val_to_train_sim",
)


def _pair_line(p: Pair, tau: float) -> list[Any]:
    line = [
        p.synthetic_id,
        p.rank,
        p.train_id,
        p.patient_id,
        f"{p.similarity:.6f}",
        f"{p.p_value:.6g}",
        int(p.is_copy(tau)),
        f"{p.pixel_corr:.6f}",
    ]
    line += [f"{p.ssim:.6f}"] if p.ssim is not None else []
    if p.alignment is not None:
        retrieval = "" if p.retrieval is None or math.isnan(p.retrieval) else f"{p.retrieval:.6f}"
        shift = " ".join(str(v) for v in p.alignment.shift)
        line += [retrieval, p.alignment.axis, f"{p.alignment.angle:g}", shift, f"{p.alignment.scale:g}"]
    return line


VERIFIED_HEADER = ("retrieval_similarity", "align_axis", "align_angle", "align_shift", "align_scale")


def _alignment(row: dict[str, str]) -> tuple[float | None, Alignment | None]:
    if not row.get("align_shift") and not row.get("align_angle"):
        return None, None
    retrieval = float(row["retrieval_similarity"]) if row.get("retrieval_similarity") else math.nan
    shift = tuple(int(v) for v in row["align_shift"].split())
    scale = float(row.get("align_scale") or 1.0)  # scans before the zoom search wrote no column: not scaled
    return retrieval, Alignment(int(row["align_axis"]), float(row["align_angle"]), shift, scale)


RESULT_FILES = (PAIRS, TRAIN_NN, NEIGHBORS, PATIENTS)
PATIENT_HEADER = ("synthetic_id", "nearest_patient", "patient_similarity", "resembles_patient")


@dataclass(frozen=True)
class PatientRow:
    """A synthetic sample's nearest training patient (a row of ``patients.csv``)."""

    synthetic_id: str
    patient_id: str
    similarity: float
    resembles: bool


def new_scan_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def write_results(
    folder: str | Path,
    tau: float,
    pairs: list[Pair],
    train_rows: list[TrainRow],
    neighbors: dict[str, npt.NDArray[Any]],
    patients: list[PatientRow] | None = None,
) -> dict[str, str]:
    """Write ``pairs.csv``, ``train_nn.csv``, ``neighbors.npz`` (and ``patients.csv`` when given) into
    ``folder``; return their SHA-256."""
    folder = Path(folder)
    header = [*PAIR_HEADER, *(["ssim"] if pairs and pairs[0].ssim is not None else [])]
    header += list(VERIFIED_HEADER) if pairs and pairs[0].alignment is not None else []
    write_csv(folder / PAIRS, header, [_pair_line(p, tau) for p in pairs])
    write_csv(
        folder / TRAIN_NN,
        TRAIN_HEADER,
        [
            [
                r.train_id,
                r.patient_id,
                r.nearest_synthetic_id,
                f"{r.similarity:.6f}",
                int(is_copy(r.similarity, tau)),
                f"{r.nearest_val_similarity:.6f}",
            ]
            for r in train_rows
        ],
    )
    missing = set(NEIGHBOR_KEYS) - set(neighbors)
    if missing:
        raise ValueError(f"neighbour tables missing {sorted(missing)}")
    with atomic_path(folder / NEIGHBORS) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **neighbors)  # type: ignore[arg-type]
    if patients is not None:
        write_csv(
            folder / PATIENTS,
            PATIENT_HEADER,
            [[r.synthetic_id, r.patient_id, f"{r.similarity:.6f}", int(r.resembles)] for r in patients],
        )
    return {name: sha256_file(folder / name) for name in RESULT_FILES if (folder / name).is_file()}


@contextlib.contextmanager
def staged_scan(folder: str | Path) -> Iterator[Path]:
    """A staging folder inside the study for one scan's outputs; removed whatever happens.

    The scan writes everything there; :func:`commit_scan` then moves it into place with the summary last.
    A failed scan leaves nothing behind but its (failed) run record.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".scan-", suffix=".tmp", dir=folder))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def commit_scan(folder: str | Path, stage: Path, summary: ScanSummary) -> None:
    """Move a staged scan into the study: folders, then result files, then ``summary.json`` last.

    ``summary.json`` names the scan and the hash of every result file, so a reader can tell a complete
    scan from one interrupted half way through its commit (the files would not match).
    """
    folder = Path(folder)
    for item in sorted(stage.iterdir(), key=lambda p: (p.is_file(), p.name)):
        target = folder / item.name
        if item.is_dir():
            old = folder / f".{item.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            if target.exists():
                os.replace(target, old)
            os.replace(item, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(item, target)
    write_summary(folder, summary)


def summary_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a summary's canonical JSON form (keys sorted, no spaces): what ``study.sqlite`` records."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_summary(folder: str | Path, summary: ScanSummary) -> None:
    """Write ``summary.json`` and record its hash in ``study.sqlite`` (first, so a summary is never on disk
    unrecorded): the only way MemoScope writes a summary."""
    data = json.loads(json.dumps(summary.to_dict()))  # as a reader will parse it
    anchor_summary(folder, summary.scan_id, summary_digest(data))
    atomic_write_json(Path(folder) / SUMMARY, data)


def write_scan(
    folder: str | Path,
    summary: ScanSummary,
    pairs: list[Pair],
    train_rows: list[TrainRow],
    neighbors: dict[str, npt.NDArray[Any]],
) -> ScanSummary:
    """Stage and commit a scan's results in one go (for callers with nothing else to stage)."""
    with staged_scan(folder) as stage:
        files = write_results(stage, summary.tau, pairs, train_rows, neighbors)
        summary = summary.replace(files=files, scan_id=summary.scan_id or new_scan_id())
        commit_scan(folder, stage, summary)
    return summary


def write_embeddings(folder: str | Path, role: str, ids: list[str], vectors: npt.NDArray[np.float32]) -> None:
    with atomic_path(Path(folder) / EMBEDDINGS / f"{role}.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.array(ids), vectors=vectors)


def read_embeddings(folder: str | Path, role: str) -> tuple[list[str], npt.NDArray[np.float32]]:
    """A scanned study's embeddings of one set (as :func:`write_embeddings` wrote them): IDs and ``(N, D)``."""
    path = Path(folder) / EMBEDDINGS / f"{role}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return [str(i) for i in stored["ids"]], np.asarray(stored["vectors"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise MemoScopeError(
            f"{path}: the scan's {role} embeddings are missing or unreadable ({exc}); rescan."
        ) from exc


def _check_version(data: dict[str, Any], path: Path) -> None:
    version = data.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise MemoScopeError(
            f"{path}: written by a newer MemoScope (schema {version}; this one reads "
            f"{SCHEMA_VERSION}); upgrade MemoScope to open this study."
        )
    raise MemoScopeError(
        f"{path}: written by an older MemoScope (schema {version}); run "
        f"`python -m core upgrade-study --study {path.parent}` (or rescan) to open it."
    )


def read_summary(folder: str | Path) -> ScanSummary:
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise MemoScopeError(f"{path}: this study has not been scanned yet; run a scan first.")
    data = _summary_json(path)
    _check_version(data, path)
    summary = ScanSummary.from_dict(data, source=str(path))
    anchor = summary_anchor(folder, summary.scan_id)
    if anchor is None:
        raise MemoScopeError(
            f"{path}: not recorded in the study's {DB_NAME} (copied from elsewhere, edited, or written by an older "
            f"MemoScope). If you trust it as it is, record it with `python -m core upgrade-study --study {folder}`; "
            "otherwise rescan."
        )
    if anchor != summary_digest(data):
        raise MemoScopeError(
            f"{path}: differs from the summary the scan recorded in {DB_NAME} (edited after the scan: a threshold, "
            "a count, a path); rescan the study, or restore the file the scan wrote."
        )
    return summary


def _summary_json(path: Path) -> dict[str, Any]:
    """``summary.json`` parsed, refused by name when it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MemoScopeError(f"{path}: not valid JSON ({exc}); rescan the study.") from exc
    except RecursionError as exc:
        raise MemoScopeError(f"{path}: nested too deeply to be a MemoScope summary; rescan the study.") from exc
    if not isinstance(data, dict):
        raise MemoScopeError(f"{path}: holds a JSON {type(data).__name__}, not a scan summary; rescan the study.")
    return data


def is_scanned(folder: str | Path) -> bool:
    return (Path(folder) / SUMMARY).is_file()


@dataclass(frozen=True)
class ScanResults:
    """A scanned study's results, read through typed records (open with :meth:`open`)."""

    folder: Path
    summary: ScanSummary

    @classmethod
    def open(cls, folder: str | Path) -> ScanResults:
        """Open a scanned study; refuse one whose result files are not the ones its summary names."""
        results = cls(Path(folder), read_summary(folder))
        results.verify()
        return results

    def verify(self) -> None:
        """Check every result file against the summary's hashes (an interrupted rescan or an edit is refused)."""
        for name, digest in sorted(self.summary.files.items()):
            path = self._require(name)
            if sha256_file(path) != digest:
                raise MemoScopeError(
                    f"{path}: does not belong to scan {self.summary.scan_id} recorded in {SUMMARY} (an interrupted "
                    "rescan or an edited file); rescan the study before reviewing, reporting or releasing it."
                )

    def pair_ref(self, synthetic_id: str, train_id: str) -> PairRef:
        """What identifies a reviewed pair: this scan and the content of both images."""
        return PairRef(
            synthetic_id,
            train_id,
            self.summary.scan_id,
            image_hash(self.summary, "synthetic", synthetic_id),
            image_hash(self.summary, "train", train_id),
        )

    def _require(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise MemoScopeError(f"{path}: missing; rescan the study.")
        return path

    def pairs(self) -> list[Pair]:
        """Every synthetic sample's k training neighbours, in file order."""
        return [
            Pair(
                r["synthetic_id"],
                int(r["rank"]),
                r["train_id"],
                r["patient_id"],
                float(r["similarity"]),
                float(r["p_value"]),
                float(r["pixel_corr"]),
                float(r["ssim"]) if r.get("ssim") else None,
                *_alignment(r),
            )
            for r in read_csv(self._require(PAIRS))
        ]

    def nearest(self) -> list[Pair]:
        """One pair per synthetic sample: its nearest training scan."""
        return nearest_pairs(self.pairs())

    def patient_rows(self) -> dict[str, PatientRow]:
        """Each synthetic sample's nearest training patient, by synthetic ID (empty for scans before v0.3)."""
        if PATIENTS not in self.summary.files:
            return {}
        return {
            r["synthetic_id"]: PatientRow(
                r["synthetic_id"], r["nearest_patient"], float(r["patient_similarity"]), r["resembles_patient"] == "1"
            )
            for r in read_csv(self._require(PATIENTS))
        }

    def train_rows(self) -> list[TrainRow]:
        return [
            TrainRow(
                r["train_id"],
                r["patient_id"],
                r["nearest_synthetic_id"],
                float(r["similarity"]),
                float(r["nearest_val_similarity"]),
            )
            for r in read_csv(self._require(TRAIN_NN))
        ]

    def best(self, key: str) -> npt.NDArray[np.float64]:
        """One best-similarity column of ``neighbors.npz`` in its set's order (``train_to_synthetic``: the rows of
        ``train_nn.csv``; ``synthetic_to_train``: the samples of ``pairs.csv``), unsorted."""
        with np.load(self._require(NEIGHBORS), allow_pickle=False) as data:
            return np.asarray(data[f"{key}_sim"][:, 0], dtype=np.float64)

    def calibration(self) -> Calibration:
        """The sorted best-correlation arrays from ``neighbors.npz``."""
        with np.load(self._require(NEIGHBORS), allow_pickle=False) as data:
            best = {
                key: np.sort(np.asarray(data[f"{key}_sim"][:, 0], dtype=np.float64))
                for key in ("train_to_val", "train_to_synthetic", "synthetic_to_train")
            }
            val = np.asarray(data["val_to_train_sim"][:, 0], dtype=np.float64)
            order = np.argsort(val, kind="stable")
            groups = data["val_patient_group"][order] if "val_patient_group" in data.files else None
        return Calibration(val_to_train=val[order], val_groups=groups, **best)

    @property
    def detector_folder(self) -> Path:
        return Path(self.summary.detector.path)


def nearest_pairs(pairs: list[Pair]) -> list[Pair]:
    """The nearest pair of each synthetic sample (rank 1), in input order."""
    return [p for p in pairs if p.nearest]


def copies(pairs: list[Pair], tau: float) -> list[Pair]:
    """The nearest pairs that are copies at ``tau``."""
    return [p for p in nearest_pairs(pairs) if p.is_copy(tau)]


# ---------------------------------------------------------------- upgrading older studies


def _summary_from_v1(data: dict[str, Any]) -> ScanSummary:
    """A schema-1 ``summary.json`` (MemoScope 0.1: flat keys, ``threshold`` a number) as a typed summary."""
    rule = ThresholdRule(data["rule"])
    counts = data["counts"]
    null_size = {ThresholdRule.PAPER: counts["train"], ThresholdRule.HELDOUT: counts["val"]}.get(rule, 0)
    fpr = data["expected_false_positive_rate"]
    carried = (
        "inputs",
        "preprocessing",
        "detector",
        "versions",
        "finished_at",
        "slices",
        "k",
        "seed",
        "checkpoint",
        "checkpoint_hash",
        "generations",
        "timings",
    )
    return ScanSummary.from_dict(
        {
            "scan_id": f"upgraded-{data.get('finished_at', '')}",
            "threshold": {
                "rule": rule,
                "percentile": data.get("percentile"),
                "value": float(data["threshold"]),
                "null_size": null_size,
            },
            "memorized": data["memorized_training_fraction"],
            "copies": data["copy_fraction"],
            "expected_fpr_copy": fpr["copy"],
            "expected_fpr_memorized": fpr["memorized"],
            **{key: data[key] for key in carried if key in data},
        },
        source="summary.json (schema 1)",
    )


def upgrade_study(folder: str | Path) -> bool:
    """Rewrite an older study's ``summary.json`` in the current schema; returns whether anything changed.

    Every number, hash and path stays as the scan wrote it. What schema 1 did not record is taken from the
    files as they are now: the hashes of the result files and of the synthetic files (so a release checks
    against the study as it was upgraded).
    """
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise MemoScopeError(f"{path}: not a scanned study.")
    data = _summary_json(path)
    version = data.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        summary = ScanSummary.from_dict(data, source=str(path))
        recorded = summary_anchor(folder, summary.scan_id)
        if recorded is None:  # scanned before summaries were recorded: record it as it is, at the user's word
            anchor_summary(folder, summary.scan_id, summary_digest(data))
            return True
        if recorded != summary_digest(data):
            raise MemoScopeError(
                f"{path}: differs from the summary the scan recorded in {DB_NAME} (edited after the scan); "
                "upgrade-study does not bless an edit: rescan the study, or restore the file the scan wrote."
            )
        return False
    if version != 1:
        _check_version(data, path)
    summary = _summary_from_v1(data)
    files = {name: sha256_file(Path(folder) / name) for name in RESULT_FILES if (Path(folder) / name).is_file()}
    inputs = dict(summary.inputs)
    for role in HASHED_ROLES:
        inputs[role] = inputs[role].replace(file_hashes=file_hashes(summary.source(role), role))
    summary = summary.replace(files=files, inputs=inputs)
    write_summary(folder, summary)
    return True


HASHED_ROLES = (Role.TRAIN, Role.SYNTHETIC)


def file_hashes(source: str | Path, role: str | None = None) -> dict[str, str]:
    """SHA-256 of every file of a folder or manifest, keyed by sample ID (a DICOM series: its files in order)."""
    hashes = {}
    for record in discover(source, role if role != "synthetic" else None):  # type: ignore[arg-type]
        path = Path(record.path)
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        hashes[record.sample_id] = sha256_files(files) if len(files) > 1 else sha256_file(files[0])
    return hashes
