"""The whole memorization scan: load, (train) detector, embed, search, calibrate, write the study's results."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.common.config import Config, check_range
from core.common.devices import Precision, check_precision, device_description, resolve_device
from core.common.errors import MemoScopeError
from core.common.progress import Progress, ProgressEvent, silent
from core.common.provenance import now_utc, versions
from core.detect.diagnostics import calibration_diagnostics
from core.detect.metrics import (
    Fraction,
    MemorizationMetrics,
    RuleChoice,
    Threshold,
    ThresholdRule,
    calibrate,
    crossfit_fpr,
    empirical_p_values,
    is_copy,
    memorization_metrics,
    min_null_size,
    parse_rule,
    pixel_correlation,
    ssim,
    wilson_interval,
)
from core.detect.resemblance import PatientResemblance, nearest_patients, patient_resemblance
from core.detect.search import NeighborTables, SearchConfig, SearchReport, search_all
from core.detect.verify import MatchMethod, Verified, Verifier, VerifyConfig, verify_tables
from core.generative.sample import generation_records
from core.io.discover import Role, discover, discover_patients
from core.io.headers import largest_side
from core.io.load import SLICE_AXES, ImageSet, SliceAxis, load_set, source_of
from core.io.patients import PatientGrouping, PatientRule, PatientSource, doubt_message
from core.io.preprocessing import PreprocessSpec, ResizeMode
from core.io.splits import check_patient_overlap
from core.study import results
from core.study.privacy import STAGES as PRIVACY_STAGES
from core.study.results import DetectorRef, InputSet, Pair, ScanSummary, TrainRow
from core.study.store import open_study

if TYPE_CHECKING:  # the networks load when a scan runs, not when one is configured (the app's job queue)
    import torch

    from core.detect.detector import Detector, Embeddings

logger = logging.getLogger(__name__)
STAGES = ("load", "detector", "train detector", "embed", "search", "verify", "calibrate", "write", *PRIVACY_STAGES)
DEFAULT_TRAIN_BUDGET = 20.0  # minutes of detector training a verified scan spends before it retrieves by pixels


@dataclass(frozen=True)
class ScanConfig(Config):
    """One scan: its inputs, output study and settings (the job record and ``study.sqlite`` keep it whole).

    Attributes:
        train, val, synthetic: folders or CSV manifests; ``out``: the study folder.
        spec: preprocessing of all three sets (a given detector's own spec wins, and is logged).
        slices: take 2D slices of 3D files along this axis.
        method: ``verified`` (default: embedding retrieval, then alignment verification decides; ``verify`` holds
            its settings) or ``paper`` (the embedding correlation decides, as in Dar et al.).
        threshold_rule: ``paper``, ``heldout``, ``heldout-ucb``, ``heldout-patient`` or ``fixed:X``; empty: the
            method's own (``heldout-patient`` for verified: a prediction bound for a scan of a new patient, from the
            null built exactly like the test statistic; ``paper`` for paper). percentile: for the percentile rules.
        k: neighbours kept per synthetic sample; seed: detector training and bootstrap.
        skip_bad: skip unreadable files (listed in the summary) instead of stopping.
        detector: a trained detector folder; without one a detector is trained into ``out/detector``
            with ``detector_overrides`` (keys of :class:`core.detect.detector.DetectorConfig`).
        cache_dir: the embedding cache.
        device: where the detector trains and embeds and pairs are verified: ``auto`` (CUDA, then MPS, then CPU),
            ``cpu``, ``cuda[:i]`` or ``mps``; the one used is recorded in the summary.
        ray, workers: ``local`` or a Ray cluster address to train the detector (Ray Train, DDP: the same optimisation
            as one process), embed and verify on Ray workers (one per GPU unless ``workers``); empty: here.
        train_budget: minutes (0: no limit; unset: 20 with the verified call, none with the paper's, whose call
            rests on the trained embedding); when training the detector here would take longer (projected at its
            second evaluation, which is all that is spent finding out), the scan trains none and retrieves by
            blurred pixels (the ``pixels`` encoder), and says so in the summary and the report. The projection
            depends on this machine's speed and load, so the decision is recorded; ``--train-budget 0`` or
            ``--detector none`` fix it for runs that must repeat. The
            verified call kept its recall and unseen-patient FPR on the planted-copy benchmarks with no detector
            at all (``benchmarks/detector_budget.py``), so past the budget it is the paper's call that loses; on a
            GPU, or at the demo's size on a CPU, the contrastive detector fits. A given detector is used whatever
            its cost, and on Ray the budget is not checked (a cluster is asked for because training is affordable
            there).
        approximate_above: training sets larger than this are searched with an IVF index widened until its recall@1
            on a sample of the queries reaches 0.99 (else exactly; see :mod:`core.detect.search`); its recall@1
            against exact search (the lowest over the synthetic and validation query sets) goes into the summary.
        patient_top: patient resemblance averages each query's best ``patient_top`` matches among one patient's
            scans (see :mod:`core.detect.resemblance`).
        patients: where the training and validation scans' patients come from (:mod:`core.io.patients`):
            ``auto``, ``folder``, ``dicom``, ``manifest`` or ``pattern:REGEX``.
        privacy: when the samples record their checkpoint, run the privacy tests after the scan
            (:func:`core.study.privacy.run_privacy`: membership through the checkpoint, C_T, authenticity, nearest
            record) with the scan's seed; ``python -m core privacy`` runs them later or with other settings.
    """

    train: str
    val: str
    synthetic: str
    out: str
    spec: PreprocessSpec
    slices: SliceAxis | None = None
    method: MatchMethod = MatchMethod.VERIFIED
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    threshold_rule: str = ""
    percentile: float = 95.0
    k: int = 5
    seed: int = 0
    skip_bad: bool = False
    detector: str | None = None
    detector_overrides: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    patient_top: int = 3
    device: str = "auto"
    precision: Precision = Precision.FP32
    approximate_above: int = 10_000_000
    train_budget: float | None = None
    ray: str = ""
    workers: int = 0
    patients: str = PatientSource.AUTO
    privacy: bool = True

    @property
    def budget_minutes(self) -> float:
        """:attr:`train_budget` in force: as given, else 20 with the verified call and none with the paper's."""
        if self.train_budget is not None:
            return self.train_budget
        return 0.0 if self.method == MatchMethod.PAPER else DEFAULT_TRAIN_BUDGET

    @property
    def rule(self) -> str:
        """The threshold rule text in force (the method's own when none was given)."""
        own = ThresholdRule.PAPER if self.method == MatchMethod.PAPER else ThresholdRule.HELDOUT_PATIENT
        return self.threshold_rule or own

    @property
    def rule_choice(self) -> RuleChoice:
        """:attr:`rule` parsed (checked when the config is built, so this never fails afterwards)."""
        return parse_rule(self.rule)

    def validate(self) -> None:
        parse_rule(self.rule)  # the boundary: a bad rule is refused here, naming the option
        check_range("percentile", self.percentile, 0.0, 100.0)
        if self.percentile >= 100.0:
            raise MemoScopeError(
                "percentile 100 puts the threshold above every validation score, so no finite null can set it; "
                "use at most 99.9 (or --threshold-rule fixed:X)."
            )
        if not str(self.out).strip():
            raise MemoScopeError("--out is empty; give the study folder to write (new or existing).")
        check_range("k", self.k, 1)
        check_range("patient_top", self.patient_top, 1)
        if self.train_budget is not None:
            check_range("train_budget", self.train_budget, 0.0)
        object.__setattr__(self, "patients", str(PatientRule.parse(self.patients)))
        if self.slices and self.spec.spatial_dims != 2:
            raise MemoScopeError("slices takes 2D slices of 3D files; use it with 2D preprocessing (--dims 2).")


def _checkpoint_of(synthetic_source: str) -> dict[str, Any]:
    """The generation records (``core generate``) found in the synthetic folder, and their checkpoints."""
    generations = generation_records(synthetic_source)
    hashes = sorted({g.checkpoint_hash for g in generations if g.checkpoint_hash})
    return {
        "checkpoint": generations[0].checkpoint if len(hashes) == 1 else None,
        "checkpoint_hash": hashes[0] if len(hashes) == 1 else (hashes or None),
        "generations": [g.data for g in generations],
    }


def pair_records(
    tables: NeighborTables,
    train: ImageSet,
    synthetic: ImageSet,
    null: np.ndarray,
    verified: Verified | None = None,
    verify_config: VerifyConfig | None = None,
) -> list[Pair]:
    """One pair per synthetic sample and neighbour rank, with the pixel-space cross-check.

    With ``verified`` (the verified method) each pair also keeps its retrieval similarity and the alignment
    found, and the pixel correlation and SSIM are measured after that alignment.
    """
    sims, idx = tables.synthetic_to_train.similarity, tables.synthetic_to_train.index
    p_values = empirical_p_values(sims.ravel(), null).reshape(sims.shape)
    two_d = train.spec.spatial_dims == 2
    verifier = Verifier(train.compared.shape[2:], verify_config) if verified is not None else None
    pairs = []
    for s, syn_id in enumerate(synthetic.ids):
        for rank in range(sims.shape[1]):
            t = int(idx[s, rank])
            a, b = synthetic.compared[s, 0], train.compared[t, 0]
            retrieval, alignment, pixel = None, None, None
            if verified is not None and verifier is not None:
                retrieval, alignment = float(verified.retrieval[s, rank]), verified.alignments[s][rank]
                pixel = float(verified.pixel[s, rank])  # on the overlap every allowed shift keeps
                b = verifier.apply(b, alignment)
            pairs.append(
                Pair(
                    syn_id,
                    rank + 1,
                    train.ids[t],
                    train.patient_ids[t],
                    float(sims[s, rank]),
                    float(p_values[s, rank]),
                    pixel_correlation(a, b) if pixel is None else pixel,
                    ssim(a, b) if two_d else None,
                    retrieval,
                    alignment,
                )
            )
    return pairs


def train_records(tables: NeighborTables, train: ImageSet, synthetic: ImageSet) -> list[TrainRow]:
    t2s = tables.train_to_synthetic
    return [
        TrainRow(
            tid,
            train.patient_ids[i],
            synthetic.ids[int(t2s.index[i, 0])],
            float(t2s.best[i]),
            float(tables.train_to_val.best[i]),
        )
        for i, tid in enumerate(train.ids)
    ]


def neighbor_arrays(tables: NeighborTables, val_patients: list[str]) -> dict[str, np.ndarray]:
    """The arrays of ``neighbors.npz``; ``val_patient_group`` numbers each validation scan's patient (0, 1, ...
    in order of appearance; no identifiers), so a study can be recalibrated with the ``heldout-patient`` rule."""
    groups = {p: i for i, p in enumerate(dict.fromkeys(val_patients))}
    return {
        "val_patient_group": np.array([groups[p] for p in val_patients], dtype=np.int64),
        "synthetic_to_train_sim": tables.synthetic_to_train.similarity,
        "synthetic_to_train_idx": tables.synthetic_to_train.index,
        "train_to_synthetic_sim": tables.train_to_synthetic.similarity,
        "train_to_synthetic_idx": tables.train_to_synthetic.index,
        "train_to_val_sim": tables.train_to_val.similarity,
        "val_to_train_sim": tables.val_to_train.similarity,
    }


def verification_spec(config: ScanConfig, spec: PreprocessSpec) -> PreprocessSpec | None:
    """The grid the verified call compares on: the scans' own resolution (from their headers; the coarser of the
    real and the synthetic sets) up to ``config.verify.max_size``, when that is finer than the embedding's;
    ``None``: the embedding's grid (also for ``crop_pad``, which keeps the scans' own pixels already)."""
    if config.method != MatchMethod.VERIFIED or spec.resize == ResizeMode.CROP_PAD:  # crop_pad: already native
        return None
    axes = None
    if config.slices is not None:
        axes = tuple(a for a in range(3) if a != SLICE_AXES[config.slices])
    sides = {
        role: largest_side(discover(getattr(config, role), role if role != Role.SYNTHETIC else None), axes)
        for role in results.ROLES
    }
    # never finer than the synthetic samples: an LDM's 64 px samples upsampled onto 256 px training scans would lose
    # to their own source the detail they never had, and copies would score low
    native = min(max(sides[Role.TRAIN], sides[Role.VAL]), sides[Role.SYNTHETIC])
    embedding = max(spec.spatial_size)
    side = config.verify.grid_side(spec.spatial_dims, embedding, native)
    if side <= embedding:
        return None
    return spec.replace(spatial_size=[round(s * side / embedding) for s in spec.spatial_size])


def _load_sets(
    config: ScanConfig, spec: PreprocessSpec, progress: Progress, verify_spec: PreprocessSpec | None = None
) -> dict[str, ImageSet]:
    sets: dict[str, ImageSet] = {}
    for i, role in enumerate(results.ROLES):
        progress(ProgressEvent("load", i, len(results.ROLES), f"loading {role}"))
        sets[role] = load_set(
            getattr(config, role),
            spec,
            role=role if role != "synthetic" else None,  # type: ignore[arg-type]
            slices=config.slices,
            skip_bad=config.skip_bad,
            patients=None if role == "synthetic" else config.patients,
            verify_spec=verify_spec,
        )
    check_patient_overlap(sets["train"], sets["val"])
    progress(
        ProgressEvent(
            "load",
            3,
            3,
            f"loaded {len(sets['train'])} training, {len(sets['val'])} validation, "
            f"{len(sets['synthetic'])} synthetic samples",
        )
    )
    return sets


@dataclass(frozen=True)
class Chosen:
    """The scan's detector and, when none was trained, the sentence saying why (``DetectorRef.choice``)."""

    detector: Detector
    choice: str = ""


NO_DETECTOR_ASKED = (
    "No detector was trained for this scan (--detector none): blurred, downsampled pixels retrieved the nearest "
    "training scans."
)


def _detector(
    config: ScanConfig,
    given: Detector | None,
    sets: dict[str, ImageSet],
    stage: Path,
    progress: Progress,
    device: torch.device,
) -> Chosen:
    """The given detector, or one trained with ``config.detector_overrides``, or none (the ``pixels`` encoder) when
    asked for or when training would exceed ``config.budget_minutes`` (projected at its second evaluation)."""
    from core.detect.detector import DetectorConfig, TrainingOverBudget, train_and_save

    if given is not None:
        progress(ProgressEvent("detector", 1, 1, f"using {config.detector}"))
        return Chosen(given)
    train, val = sets["train"], sets["val"]
    planned = DetectorConfig.for_dims(
        train.spec.spatial_dims, list(train.spec.spatial_size), seed=config.seed, **config.detector_overrides
    )
    out = stage / results.DETECTOR

    def save(overrides: dict[str, Any], ray: str, budget: float) -> Detector:
        return train_and_save(
            train,
            val,
            out,
            config.seed,
            overrides,
            overwrite=True,
            device=device,
            progress=progress,
            precision=config.precision,
            ray=ray,
            workers=config.workers,
            budget=budget,
        )

    if not planned.arch.trained:
        progress(ProgressEvent("detector", 0, 1, "building the pixels encoder"))
        return Chosen(save(config.detector_overrides, "", 0.0), NO_DETECTOR_ASKED)
    progress(ProgressEvent("detector", 0, 1, "training a detector"))
    try:  # the budget is checked in one process; a Ray cluster is asked for because it is affordable
        return Chosen(save(config.detector_overrides, config.ray, 0.0 if config.ray else config.budget_minutes * 60))
    except TrainingOverBudget as over:
        choice = (
            f"No detector was trained for this scan: training one ({planned.arch}, {over.steps} steps) would take "
            f"about {over.projected / 60:.0f} min on {device.type} (projected from its first steps), more than "
            f"the {config.budget_minutes:g} min budget (--train-budget); blurred, downsampled pixels retrieved the "
            "nearest training scans instead."
        )
        logger.warning("%s", choice)
    progress(ProgressEvent("detector", 0, 1, "building the pixels encoder"))
    detector = save({"arch": "pixels"}, "", 0.0)
    return Chosen(detector, choice)


def _summary(
    config: ScanConfig,
    spec: PreprocessSpec,
    sets: dict[str, ImageSet],
    cached: dict[str, bool],
    detector: Detector,
    metrics: MemorizationMetrics,
    timings: dict[str, float],
    scan_id: str,
    files: dict[str, str],
) -> ScanSummary:
    inputs = {
        role: InputSet(
            s.source,
            len(s),
            len(set(s.patient_ids)),
            s.content_hash,
            tuple(s.skipped),
            cached[role],
            results.file_hashes(s.source, role) if role in results.HASHED_ROLES else {},
            s.grouping,
        )
        for role, s in sets.items()
    }
    return ScanSummary(
        threshold=metrics.threshold,
        memorized=metrics.memorized,
        copies=metrics.copies,
        expected_fpr_copy=metrics.expected_fpr_copy,
        expected_fpr_memorized=metrics.expected_fpr_memorized,
        inputs=inputs,
        preprocessing=spec,
        detector=DetectorRef(
            str(config.detector or Path(config.out) / results.DETECTOR),
            detector.detector_hash,
            detector.config,
            detector.best_epoch,
        ),
        versions=versions(),
        finished_at=now_utc(),
        slices=config.slices,
        k=config.k,
        seed=config.seed,
        timings=timings,
        scan_id=scan_id,
        files=files,
        **_checkpoint_of(config.synthetic),
    )


NOTES_BY_METHOD = {
    MatchMethod.PAPER: results.NOTES,
    MatchMethod.VERIFIED: (
        *results.NOTES,
        "Similarities are verified scores: the correlation of band-passed images after the best rigid alignment of "
        "each retrieved candidate; the threshold is calibrated on the same score between different patients.",
    ),
}


def unseen_fpr(threshold: Threshold, val_to_train: np.ndarray, val_patients: list[str]) -> Fraction | None:
    """The false-positive rate on patients the threshold was not calibrated on (see ``ScanSummary.fpr_unseen``)."""
    rule = ThresholdRule(threshold.rule)
    if rule.uses_heldout_null and threshold.percentile is not None:
        return crossfit_fpr(val_to_train, val_patients, threshold.percentile, rule)
    flagged = is_copy(val_to_train, threshold.value)
    count, total = int(flagged.sum()), len(flagged)
    if total == 0:
        return None
    low, high = wilson_interval(count, total)
    return Fraction(count, total, count / total, low, high, "validation scans above tau (not used to set it)")


def labelled(unseen: Fraction | None, grouping: PatientGrouping | None) -> Fraction | None:
    """The unseen-patient rate's method with the rule that made its patients: its folds are only as independent
    as that rule's patients are different people."""
    if unseen is None or grouping is None:
        return unseen
    how = "each file its own patient by default" if grouping.doubtful else f"patients by {grouping.rule}"
    return unseen.replace(method=f"{unseen.method} ({how})")


def _patient_resemblance(
    config: ScanConfig, rule: ThresholdRule, embeddings: dict[str, Any], sets: dict[str, ImageSet]
) -> tuple[PatientResemblance, list[results.PatientRow]]:
    """Each synthetic sample's nearest training patient, calibrated on validation -> training patients."""
    train, patients = embeddings["train"].vectors, sets["train"].patient_ids
    synthetic = nearest_patients(embeddings["synthetic"].vectors, train, patients, config.patient_top)
    null = nearest_patients(embeddings["val"].vectors, train, patients, config.patient_top)
    resemblance = patient_resemblance(synthetic, null, config.percentile, rule, config.patient_top)
    rows = [
        results.PatientRow(sid, patient, float(sim), bool(sim > resemblance.tau))
        for sid, patient, sim in zip(sets["synthetic"].ids, synthetic.patient, synthetic.similarity, strict=True)
    ]
    return resemblance, rows


NEAR_DUPLICATE_R = 0.95  # pixel correlation; real scans of different patients stay far below (demo: at most 0.75)


def check_near_duplicates(tables: NeighborTables, train: ImageSet, val: ImageSet, tau: float) -> None:
    """Refuse validation images that are near-copies of training images (the detector calls them copies and their
    pixels agree): they would raise the threshold and hide real copies. Exact duplicates were refused earlier."""
    best, index = tables.val_to_train.best, tables.val_to_train.index[:, 0]
    for j in np.flatnonzero(is_copy(best, tau)):
        i = int(index[j])
        r = pixel_correlation(val.compared[j, 0], train.compared[i, 0])
        if r >= NEAR_DUPLICATE_R:
            raise MemoScopeError(
                f"validation image {val.ids[j]} ({val.source}) is a near-copy of training image {train.ids[i]} "
                f"({train.source}): similarity {best[j]:.3f} above the threshold and pixel correlation {r:.3f}. "
                "A leaked image would distort the calibration; remove it from one of the sets."
            )


def check_calibration_size(config: ScanConfig, sets: dict[str, ImageSet]) -> None:
    """Refuse, before any training, a validation set too small for the rule's percentile."""
    rule = config.rule_choice.rule
    if rule.spec.null is None:  # a value chosen by hand needs no null
        return
    needed = min_null_size(config.percentile, rule)
    if len(sets["val"]) < needed:
        raise MemoScopeError(
            f"the validation set ({config.val}) has {len(sets['val'])} samples; the {rule} rule at percentile "
            f"{config.percentile:g} needs at least {needed} so that some real held-out samples lie above the "
            "threshold. Add validation images, lower --percentile or choose another --threshold-rule."
        )
    patients = len(set(sets["val"].patient_ids))
    if patients < rule.min_patients:
        raise MemoScopeError(
            f"the validation set ({config.val}) has scans of {patients} patient; the {rule} rule measures how the "
            f"threshold transfers to patients it was not calibrated on and needs validation scans of at least "
            f"{rule.min_patients} patients. Add another patient's scans or choose --threshold-rule paper."
        )


def check_inputs(config: ScanConfig, progress: Progress = silent) -> dict[str, PatientGrouping]:
    """Every path, manifest, split column and patient rule checked before anything is created; says which rule
    gave each set its patients and how many it found (the CLI prints them, and warns when a grouping is
    :attr:`~core.io.patients.PatientGrouping.doubtful`)."""
    found: dict[str, PatientGrouping] = {}
    for role in ("train", "val"):
        _, found[role] = discover_patients(getattr(config, role), role, config.patients)  # type: ignore[arg-type]
    discover(config.synthetic)
    for role, grouping in found.items():
        progress(ProgressEvent("load", 0, 3, f"{role} patients: {grouping.describe()}"))
        logger.info("%s patients: %s", role, grouping.describe())
        if grouping.doubtful:
            logger.info(doubt_message(role, getattr(config, role), grouping))
    return found


class _Laps:
    """Seconds per stage (``<stage>_s``) and in all (``total_s``), as the summary records them."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        self.timings[f"{name}_s"] = time.perf_counter() - self.start - sum(self.timings.values())

    def total(self) -> dict[str, float]:
        return {**self.timings, "total_s": time.perf_counter() - self.start}


@dataclass(frozen=True)
class Loaded:
    """Stage 1: the three sets, read with one spec (a given detector's own, when it has one), checked."""

    sets: dict[str, ImageSet]
    spec: PreprocessSpec
    verify_spec: PreprocessSpec | None
    given: Detector | None


@dataclass(frozen=True)
class Embedded:
    """Stage 3: each set's embeddings, and whether they came from the cache."""

    embeddings: dict[str, Embeddings]
    cached: dict[str, bool]


@dataclass(frozen=True)
class Matched:
    """Stage 4: the four neighbour tables (on verified scores for ``verified``), and how the search ran."""

    tables: NeighborTables
    search: SearchReport | None
    verified: Verified | None


@dataclass(frozen=True)
class Calibrated:
    """Stage 5: tau, the memorization metrics at it, and the patient-resemblance finding."""

    threshold: Threshold
    metrics: MemorizationMetrics
    resemblance: PatientResemblance
    patient_rows: list[results.PatientRow]


def run_scan(config: ScanConfig, progress: Progress = silent) -> ScanSummary:
    """Run the scan and write its results into the study folder ``config.out`` (see :mod:`core.study.results`).

    One function per stage, each passing a typed result to the next: :func:`load_stage` (the three sets, every
    check before any training), the detector (given or trained), :func:`embed_stage` (cached),
    :func:`match_stage` (exact search in four directions, then verification), :func:`calibrate_stage` (tau and
    the metrics), and :func:`write_stage` (every output staged, then moved into place with the summary last, and
    the run recorded in the study database).
    """
    device = resolve_device(config.device)
    precision = check_precision(device, config.precision)
    check_inputs(config, progress)
    study = open_study(config.out)
    laps = _Laps()
    scan_id = results.new_scan_id()
    with (
        study.exclusive("scan"),
        study.run("scan", {**config.to_dict(), "scan_id": scan_id}) as record,
        results.staged_scan(study.path) as stage,
    ):
        loaded = load_stage(config, progress)
        laps.lap("load")
        chosen = _detector(config, loaded.given, loaded.sets, stage, progress, device)
        detector = chosen.detector
        laps.lap("detector")
        embedded = embed_stage(config, detector, loaded.sets, stage, device, precision, progress)
        laps.lap("embed")
        matched = match_stage(config, embedded, loaded.sets, device, progress, laps)
        calibrated = calibrate_stage(config, matched, embedded, loaded.sets, progress)
        summary = write_stage(
            config, loaded, embedded, matched, calibrated, detector, stage, laps, scan_id, device, precision, progress
        )
        summary = summary.replace(detector=summary.detector.replace(choice=chosen.choice))
        results.commit_scan(study.path, stage, summary)
        try:  # the results are committed: a study.json this version cannot read is said, not a failed scan
            study.set_inputs(
                train=config.train,
                val=config.val,
                synthetic=config.synthetic,
                patients=config.patients,
                detector=summary.detector.path,
                checkpoint=summary.checkpoint,
            )
        except MemoScopeError as exc:
            logger.warning("the scan is complete, but its inputs were not recorded in study.json: %s", exc)
        record.update(summary.to_dict())
    if config.privacy and summary.checkpoint:
        _privacy_step(study.path, config.seed, device, progress)
    threshold, metrics = calibrated.threshold, calibrated.metrics
    message = (
        f"threshold {threshold.value:.4f} ({threshold.rule}); memorized {metrics.memorized.count}/"
        f"{metrics.memorized.total} ({metrics.memorized.value:.1%}); copies {metrics.copies.count}/"
        f"{metrics.copies.total} ({metrics.copies.value:.1%})"
    )
    logger.info(message)
    progress(ProgressEvent("write", 1, 1, message))
    return summary


def _privacy_step(folder: Path, seed: int, device: torch.device, progress: Progress) -> None:
    """The privacy tests of a scan whose samples name their checkpoint. The scan is committed first, so a failure
    here (a checkpoint moved or changed since the samples were made, memory) is said, not a failed scan."""
    from core.privacy.membership import MembershipConfig
    from core.study.privacy import run_privacy

    try:
        run_privacy(folder, MembershipConfig(seed=seed), str(device), progress)  # holds the study itself
    except Exception as exc:  # noqa: BLE001  (the scan's results stand whatever stopped its last step)
        logger.warning(
            "the scan is complete, but its privacy tests did not run: %s (rerun: python -m core privacy --study %s)",
            exc,
            folder,
            exc_info=not isinstance(exc, MemoScopeError),
        )


def load_stage(config: ScanConfig, progress: Progress) -> Loaded:
    """The three sets, with a given detector's own preprocessing when it has one, and the validation set checked
    against the rule's percentile: every check before any training."""
    from core.detect.detector import load_detector

    given = load_detector(config.detector) if config.detector else None
    spec = config.spec
    if given is not None and given.config.preprocessing is not None and given.config.preprocessing != spec:
        logger.info("using the detector's preprocessing %s", given.config.preprocessing.to_dict())
        spec = given.config.preprocessing
    verify_spec = verification_spec(config, spec)
    if verify_spec is not None:
        logger.info("verifying on %s (the scans' own resolution, up to the maximum)", verify_spec.spatial_size)
    sets = _load_sets(config, spec, progress, verify_spec)
    check_calibration_size(config, sets)
    return Loaded(sets, spec, verify_spec, given)


def embed_stage(
    config: ScanConfig,
    detector: Detector,
    sets: dict[str, ImageSet],
    stage: Path,
    device: torch.device,
    precision: Precision,
    progress: Progress,
) -> Embedded:
    """Each set's embeddings (from the cache when the detector and the images are unchanged), staged."""
    from core.detect.detector import embed_set

    embeddings, cached = {}, {}
    for i, (role, images) in enumerate(sets.items()):
        progress(ProgressEvent("embed", i, len(sets), f"embedding {role}"))
        embeddings[role], cached[role] = embed_set(
            detector,
            images,
            config.cache_dir,
            device=device,
            ray=config.ray,
            folder=config.detector or stage / results.DETECTOR,
            workers=config.workers,
            precision=precision,
        )
        results.write_embeddings(stage, role, images.ids, embeddings[role].vectors)
    progress(ProgressEvent("embed", len(sets), len(sets), "embedded all sets"))
    return Embedded(embeddings, cached)


def match_stage(
    config: ScanConfig,
    embedded: Embedded,
    sets: dict[str, ImageSet],
    device: torch.device,
    progress: Progress,
    laps: _Laps,
) -> Matched:
    """Nearest neighbours in four directions by embedding; for ``verified``, each candidate then scored by aligned
    structure correlation (the tables are then on verified scores)."""
    vectors = {role: e.vectors for role, e in embedded.embeddings.items()}
    progress(ProgressEvent("search", 0, 1, "nearest-neighbour search"))
    tables = search_all(
        vectors["train"],
        vectors["val"],
        vectors["synthetic"],
        SearchConfig(k=config.k, approximate_above=config.approximate_above, device=str(device)),
        ray=config.ray,
        shards=config.workers,
    )
    search_report = tables.search
    laps.lap("search")
    if config.method != MatchMethod.VERIFIED:
        return Matched(tables, search_report, None)
    checked = verify_tables(
        vectors,
        {role: images.compared for role, images in sets.items()},
        config.k,
        config.verify,
        str(device),
        config.ray,
        config.workers,
        on_step=lambda done, total, what: progress(ProgressEvent("verify", done, total, what)),
    )
    laps.lap("verify")
    return Matched(checked.tables, search_report, checked.synthetic_to_train)


def calibrate_stage(
    config: ScanConfig, matched: Matched, embedded: Embedded, sets: dict[str, ImageSet], progress: Progress
) -> Calibrated:
    """tau by the rule in force on the validation null, a check that no validation scan copies a training one,
    the memorization metrics at tau, and each sample's resemblance to a training patient."""
    rule, fixed = config.rule_choice
    tables = matched.tables
    progress(ProgressEvent("calibrate", 0, 1, "calibrating the threshold"))
    threshold = calibrate(
        rule, tables.train_to_val.best, tables.val_to_train.best, config.percentile, fixed, sets["val"].patient_ids
    )
    check_near_duplicates(tables, sets["train"], sets["val"], threshold.value)
    metrics = memorization_metrics(
        threshold,
        tables.train_to_synthetic.best,
        tables.synthetic_to_train.best,
        tables.train_to_val.best,
        tables.val_to_train.best,
        seed=config.seed,
        train_groups=sets["train"].patient_ids,
        synthetic_groups=[source_of(i) for i in sets["synthetic"].ids],
    )
    resemblance, patient_rows = _patient_resemblance(config, rule, embedded.embeddings, sets)
    return Calibrated(threshold, metrics, resemblance, patient_rows)


def write_stage(
    config: ScanConfig,
    loaded: Loaded,
    embedded: Embedded,
    matched: Matched,
    calibrated: Calibrated,
    detector: Detector,
    stage: Path,
    laps: _Laps,
    scan_id: str,
    device: torch.device,
    precision: Precision,
    progress: Progress,
) -> ScanSummary:
    """The result files, staged, and the summary that names them (the caller commits both, the summary last)."""
    tables, sets, threshold = matched.tables, loaded.sets, calibrated.threshold
    progress(ProgressEvent("write", 0, 1, "writing results"))
    pairs = pair_records(
        tables, sets["train"], sets["synthetic"], tables.val_to_train.best, matched.verified, config.verify
    )
    files = results.write_results(
        stage,
        threshold.value,
        pairs,
        train_records(tables, sets["train"], sets["synthetic"]),
        neighbor_arrays(tables, sets["val"].patient_ids),
        calibrated.patient_rows,
    )
    summary = _summary(
        config, loaded.spec, sets, embedded.cached, detector, calibrated.metrics, laps.total(), scan_id, files
    )
    return summary.replace(
        method=config.method,
        verify=config.verify if config.method == MatchMethod.VERIFIED else None,
        fpr_unseen=labelled(
            unseen_fpr(threshold, tables.val_to_train.best, sets["val"].patient_ids), sets["val"].grouping
        ),
        notes=NOTES_BY_METHOD[config.method],
        patient_resemblance=calibrated.resemblance,
        device=device_description(device),
        search=matched.search,
        precision=precision,
        verification=loaded.verify_spec,
        diagnostics=calibration_diagnostics(tables.synthetic_to_train.best, tables.val_to_train.best, threshold.value),
    )
