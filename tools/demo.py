"""The embedded demo: real scans from pip packages, LDMs trained by our own trainer, scanned by our engine.

``python -m tools.demo all`` rebuilds, from nothing and in this order:

1. ``data/demo/``: 2D axial brain-MR slices (16-bit PNG) and 3D volumes (NIfTI) from the real
   scans in :data:`core.io.sample_data.REAL_VOLUMES`, split by subject, with manifests and SOURCES.md;
2. ``checkpoints/demo-*``: 2D LDMs (without and with augmentation, each saved early, converged and
   over-trained) and a 3D LDM, trained with ``python -m core train-ldm``, and one contrastive
   detector per data set (``train-detector``);
3. ``studies/demo-*``: samples of every checkpoint (``generate``, the same seeds for all) and their
   scans (``scan``, one detector per data set so that checkpoints are compared on one scale);
4. ``docs/FINDINGS.md`` from the committed studies (:func:`findings_markdown`).

Every step calls the engine's own functions with the same configs the command line builds, so the
demo is built exactly as a user would build it. Each step is a function of the paths it is given;
nothing is kept between steps but files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from core.common.errors import MemoScopeError
from core.common.progress import logged, silent
from core.common.provenance import atomic_dir, atomic_write_json, atomic_write_text, now_utc, sha256_file, versions
from core.detect.detector import TrainDetectorConfig, train_from_sources
from core.detect.metrics import MIN_RESAMPLED_GROUPS, BeyondHeldout, Fraction, ThresholdRule
from core.generative.ldm import LDMConfig, networks_config, read_config
from core.generative.sample import GenerateConfig, generate, to_uint16
from core.generative.train import TrainLDMConfig, train_ldm
from core.io.load import load_set
from core.io.preprocessing import PreprocessSpec, config_from_options
from core.io.sample_data import REAL_VOLUMES, RealVolume, axial_slices, volume_cube
from core.study.compare import compare
from core.study.results import ScanResults, ScanSummary, is_scanned, nearest_pairs
from core.study.review import ANATOMY_FLOOR, ByPatient, by_patient, nearer_than_heldout, sample_quality
from core.study.scan import ScanConfig, run_scan
from core.study.store import DEMO_MARKER, mark_demo

logger = logging.getLogger(__name__)

# Split by subject (one volume per subject), never by slice.
TRAIN_SUBJECTS = ("mni152", "nibabel-example4d", "dipy-s0-10slices")
VAL_SUBJECTS = ("nibabel-anatomical", "dipy-aniso-vox", "dipy-piesno")
# The 3D split trains on whole heads only: dipy's 10-slice slab stretched to a cube is stripes, not a head, so it
# is a validation subject in 3D (where it lowers the null, as a poor real scan would) and dipy-aniso-vox trains.
TRAIN_SUBJECTS_3D = ("mni152", "nibabel-example4d", "dipy-aniso-vox")
VAL_SUBJECTS_3D = ("dipy-s0-10slices", "nibabel-anatomical", "dipy-piesno")


def split_of(subject: str, dims: int) -> str:
    """``train`` or ``val``: the demo's split of one subject for 2D slices or 3D volumes."""
    train = TRAIN_SUBJECTS if dims == 2 else TRAIN_SUBJECTS_3D
    return "train" if subject in train else "val"


STAGES = ("early", "converged", "over-trained")
VARIANTS = ("noaug", "aug")

# Networks small enough that all demo checkpoints stay under DEMO_BUDGET_MIB (about 3.7 MB per 2D LDM, 4.3 MB per 3D
# stage, 8 and 6 MB for the two detectors).
DEMO_BUDGET_MIB = 48
NETWORKS_2D = {
    "autoencoder": {"channels": [16, 32, 32]},
    "unet": {"channels": [32, 32, 64], "attention_levels": [False, False, True]},
}
# The 3D UNet predicts velocity: trained to predict noise, after 4,600 epochs it denoised training volumes
# from t = 500 almost exactly (r 0.92-0.99) but from pure noise drew blobs (r 0.3-0.5), the known weakness of
# noise prediction near the end of the schedule; velocity prediction is well-posed there.
NETWORKS_3D = {
    "unet": {"channels": [16, 32, 32], "num_head_channels": 16},
    "scheduler": {"prediction_type": "v_prediction"},
}
NOTE_3D = (
    "Trained on {n} real volumes of {n} subjects: far too few to generalise from. This model "
    "is expected to memorize its training volumes; it demonstrates the 3D pipeline, not a "
    "usable generator."
)


@dataclass(frozen=True)
class DemoProfile:
    """How long everything trains and how much is generated.

    Attributes:
        name: ``full`` (the committed demo) or ``quick`` (the CI-sized recipe check).
        ae_epochs_2d, ae_epochs_3d: autoencoder epochs.
        stages_2d: UNet epochs of the early, converged and over-trained 2D snapshots.
        stages_3d: UNet epochs of the early and over-trained 3D snapshots.
        n_samples_2d, n_samples_3d: samples generated per checkpoint.
        steps: DDIM sampling steps.
        detector_epochs: contrastive detector epochs (both data sets).
        percentile_2d, percentile_3d: calibration percentile of the scan's default rule (``heldout-patient``: a
            bound for a scan of a new patient, which allows for having only a few validation subjects).
    """

    name: str
    ae_epochs_2d: int
    stages_2d: tuple[int, int, int]
    ae_epochs_3d: int
    stages_3d: tuple[int, int]
    n_samples_2d: int
    n_samples_3d: int
    steps: int
    detector_epochs: int
    percentile_2d: float = 95.0
    percentile_3d: float = 95.0


PROFILES = {
    "full": DemoProfile(
        "full",
        ae_epochs_2d=100,
        stages_2d=(25, 300, 2000),
        ae_epochs_3d=400,
        stages_3d=(250, 2500),
        n_samples_2d=128,
        n_samples_3d=16,
        steps=50,
        detector_epochs=100,
    ),
    "quick": DemoProfile(
        "quick",
        ae_epochs_2d=1,
        stages_2d=(1, 2, 3),
        ae_epochs_3d=1,
        stages_3d=(1, 2),
        n_samples_2d=4,
        n_samples_3d=2,
        steps=3,
        detector_epochs=2,
    ),
}


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo lives under a root folder (the repository, or a test's temporary folder)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data" / "demo"

    @property
    def build(self) -> Path:
        return self.root / "build" / "demo"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    @property
    def record(self) -> Path:
        return self.root / "docs" / "demo-build.json"

    @property
    def findings(self) -> Path:
        return self.root / "docs" / "FINDINGS.md"

    def manifest(self, dims: int) -> Path:
        return self.data / f"{dims}d" / "manifest.csv"


@dataclass(frozen=True)
class DemoModel:
    """One demo checkpoint and the study that scans it."""

    dims: int
    variant: str  # noaug | aug
    stage: str  # early | converged | over-trained (3D: early | over-trained)
    epoch: int

    @property
    def checkpoint(self) -> str:
        return f"demo-{self.dims}d-{self.variant}-e{self.epoch:04d}" if self.dims == 2 else f"demo-3d-e{self.epoch:04d}"

    @property
    def study(self) -> str:
        if self.dims == 3:
            return "demo-3d" if self.stage == "over-trained" else f"demo-3d-{self.stage}"
        if (self.variant, self.stage) == ("noaug", "over-trained"):
            return "demo-2d"  # the study `make run` opens
        return f"demo-2d-{self.variant}-{self.stage.replace('-', '')}"


STAGES_3D = ("early", "over-trained")


def demo_models(profile: DemoProfile, dims: Sequence[int] = (2, 3)) -> list[DemoModel]:
    """Every demo checkpoint of the given dimensions: 2D variants x stages, then the 3D stages."""
    models = [
        DemoModel(2, variant, stage, epoch)
        for variant in VARIANTS
        for stage, epoch in zip(STAGES, profile.stages_2d, strict=True)
    ]
    models += [DemoModel(3, "noaug", stage, epoch) for stage, epoch in zip(STAGES_3D, profile.stages_3d, strict=True)]
    return [m for m in models if m.dims in dims]


def _volumes(subjects: Sequence[str]) -> list[RealVolume]:
    by_subject = {v.subject: v for v in REAL_VOLUMES}
    return [by_subject[s] for s in subjects]


def _package_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_data(out: Path, size_2d: int = 64, size_3d: int = 32) -> dict[str, Any]:
    """Write the demo data set (2D slices, 3D volumes, manifests, SOURCES.md) into ``out``.

    The same packages give byte-identical files: slices are min-max scaled per slice to 16-bit
    PNG (rotated to the usual display orientation), volumes to float32 NIfTI with 1 mm voxels
    of the resampled grid. Returns a summary (counts per subject and split).
    """
    counts: dict[str, dict[str, Any]] = {}
    with atomic_dir(out, overwrite=True) as tmp:
        rows_2d, rows_3d = [], []
        for volume in _volumes(TRAIN_SUBJECTS + VAL_SUBJECTS):
            split_2d, split_3d = split_of(volume.subject, 2), split_of(volume.subject, 3)
            slices = axial_slices(volume, size=size_2d)
            folder = tmp / "2d" / volume.subject
            folder.mkdir(parents=True)
            for k, image in enumerate(slices):
                name = f"axial{k:03d}.png"
                Image.fromarray(to_uint16(np.rot90(image[0]))).save(folder / name)
                rows_2d.append([f"{volume.subject}/{name}", volume.subject, split_2d])
            cube = volume_cube(volume, size_3d)[0]
            (tmp / "3d").mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(cube.astype(np.float32), np.eye(4)), str(tmp / "3d" / f"{volume.subject}.nii.gz"))
            rows_3d.append([f"{volume.subject}.nii.gz", volume.subject, split_3d])
            counts[volume.subject] = {"split_2d": split_2d, "split_3d": split_3d, "slices_2d": len(slices)}
        rows_3d.sort(key=lambda row: (TRAIN_SUBJECTS_3D + VAL_SUBJECTS_3D).index(row[1]))  # training first
        for dims, rows in ((2, rows_2d), (3, rows_3d)):
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["path", "patient_id", "split"])
            writer.writerows(rows)
            atomic_write_text(tmp / f"{dims}d" / "manifest.csv", buffer.getvalue())
        atomic_write_text(tmp / "SOURCES.md", sources_markdown(counts, size_2d, size_3d))
    return counts


def sources_markdown(counts: dict[str, dict[str, Any]], size_2d: int, size_3d: int) -> str:
    """SOURCES.md: each subject's origin package, original file, licence and what was taken."""
    lines = [
        "# Demo data: sources",
        "",
        "Built by `python -m tools.demo build-data` from real scans that ship inside pip packages (no",
        "download). One subject per volume; the split is by subject, never by slice. The 3D split trains on",
        "whole heads only: dipy's 10-slice slab stretched to a cube is stripes, so it validates in 3D.",
        "",
        "- `2d/<subject>/axialNNN.png`: non-empty axial slices (at least 15 % of voxels above 10 % of the",
        f"  volume's 99th percentile), min-max scaled per slice, resized to {size_2d}x{size_2d}, 16-bit PNG.",
        f"- `3d/<subject>.nii.gz`: the whole volume min-max scaled and resized to {size_3d}^3, float32.",
        "- `2d/manifest.csv`, `3d/manifest.csv`: `path,patient_id,split` (split `train` or `val`).",
        "",
        "| subject | 2D split | 3D split | package (version) | original file | licence | 2D slices | 3D volumes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for volume in REAL_VOLUMES:
        if volume.subject not in counts:
            continue
        c = counts[volume.subject]
        original = volume.relative_path + (
            f" (volume {volume.volume_index})" if volume.volume_index is not None else ""
        )
        lines.append(
            f"| {volume.subject} | {c['split_2d']} | {c['split_3d']} | {volume.package} "
            f"({_package_version(volume.package)}) | `{original}` | {volume.licence} | {c['slices_2d']} | 1 |"
        )
    lines += [
        "",
        "Derived files of the same subjects (denoised, resampled or tissue maps) are left out, so no",
        "subject appears twice.",
        "",
    ]
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the working folder when below it (so that a demo built in the
    repository records no machine paths), else absolute. ``root`` is only checked to exist."""
    if not root.exists():
        raise MemoScopeError(f"{root}: demo root folder does not exist.")
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _train_ldm(manifest: Path, out: Path, dims: int, networks: Path, options: dict[str, Any]) -> None:
    spec = PreprocessSpec.for_dims(dims)
    logger.info("train-ldm %s -> %s", manifest, out)
    images = load_set(manifest, spec, role="train")
    config = TrainLDMConfig.from_dict({"seed": 0, **options})
    train_ldm(images, out, config, networks_config(networks, dims, spec.spatial_size), progress=logged(logger, silent))


def train_models(paths: DemoPaths, profile: DemoProfile, dims: Sequence[int] = (2, 3)) -> None:
    """Train the 2D and 3D LDMs into ``build/demo`` and copy the chosen snapshots to ``checkpoints/``."""
    r = paths.root
    networks = paths.build / "networks"
    networks.mkdir(parents=True, exist_ok=True)
    for d, spec in ((2, NETWORKS_2D), (3, NETWORKS_3D)):
        atomic_write_json(networks / f"{d}d.json", spec)
    early, converged, over = profile.stages_2d
    for variant in VARIANTS if 2 in dims else ():
        note = (
            f"MemoScope demo ({profile.name} profile): snapshots after {early} (early), {converged} (converged) "
            f"and {over} (over-trained) UNet epochs."
        )
        _train_ldm(
            Path(_rel(paths.manifest(2), r)),
            Path(_rel(paths.build / f"ldm-2d-{variant}", r)),
            2,
            Path(_rel(networks / "2d.json", r)),
            {
                "ae_epochs": profile.ae_epochs_2d,
                "epochs": over,
                "save_at": [early, converged],
                "notes": [note],
                "augment": variant == "aug",
            },
        )
    if 3 in dims:
        _train_ldm(
            Path(_rel(paths.manifest(3), r)),
            Path(_rel(paths.build / "ldm-3d", r)),
            3,
            Path(_rel(networks / "3d.json", r)),
            {
                "ae_epochs": profile.ae_epochs_3d,
                "epochs": profile.stages_3d[1],
                "save_at": [profile.stages_3d[0]],
                "batch_size": 4,
                "notes": [NOTE_3D.format(n=len(TRAIN_SUBJECTS_3D))],
            },
        )
    for model in demo_models(profile, dims):
        run = paths.build / (f"ldm-2d-{model.variant}" if model.dims == 2 else "ldm-3d")
        last = over if model.dims == 2 else profile.stages_3d[1]
        snapshot = run / ("last" if model.epoch == last else f"epoch-{model.epoch:04d}")
        target = paths.checkpoints / model.checkpoint
        with atomic_dir(target, overwrite=True) as tmp:
            for item in snapshot.iterdir():
                shutil.copy2(item, tmp / item.name)
        logger.info("checkpoint %s <- %s", model.checkpoint, _rel(snapshot, r))


def train_detectors(paths: DemoPaths, profile: DemoProfile, dims: Sequence[int] = (2, 3)) -> None:
    """One contrastive detector per data set (the paper's encoder; ResNet-18 would not fit the budget)."""
    r = paths.root
    for d in dims:
        manifest = _rel(paths.manifest(d), r)
        config = config_from_options(
            TrainDetectorConfig,
            {
                "train": manifest,
                "val": manifest,
                "out": _rel(paths.checkpoints / f"demo-{d}d-detector", r),
                "dims": d,
                "seed": 0,
                "overwrite": True,
                "overrides": {"arch": "convres", "epochs": profile.detector_epochs},
            },
        )
        logger.info("train-detector -> %s", config.out)
        train_from_sources(config, progress=logged(logger, silent))


def generate_and_scan(paths: DemoPaths, profile: DemoProfile, dims: Sequence[int] = (2, 3)) -> None:
    """Samples of every checkpoint (seed 0 for all: common random numbers) and their scans."""
    r = paths.root
    for model in demo_models(profile, dims):
        study = paths.studies / model.study
        if study.exists():
            shutil.rmtree(study)
        synthetic = _rel(study / "synthetic", r)
        generate(
            GenerateConfig(
                checkpoint=_rel(paths.checkpoints / model.checkpoint, r),
                out=synthetic,
                n=profile.n_samples_2d if model.dims == 2 else profile.n_samples_3d,
                steps=profile.steps,
                batch_size=16,
                seed=0,
                device="cpu",
            ),
            progress=logged(logger, silent),
        )
        manifest = _rel(paths.manifest(model.dims), r)
        run_scan(
            config_from_options(
                ScanConfig,
                {
                    "train": manifest,
                    "val": manifest,
                    "synthetic": synthetic,
                    "out": _rel(study, r),
                    "dims": model.dims,
                    "detector": _rel(paths.checkpoints / f"demo-{model.dims}d-detector", r),
                    "percentile": profile.percentile_2d if model.dims == 2 else profile.percentile_3d,
                    "k": 5,
                    "seed": 0,
                    "cache_dir": _rel(paths.build / "embeddings", r),
                },
            ),
            progress=logged(logger, silent),
        )
        mark_demo(study)


def clean(paths: DemoPaths, profile: DemoProfile, dims: Sequence[int] = (2, 3)) -> None:
    """Remove every demo output of these dimensions (and only those) so that the build starts from nothing.

    A 3D-only rebuild keeps the data (rebuilt byte-identical), the record and the 2D build folders; the
    checkpoints and studies of every earlier 3D recipe go (their names carry the epoch count)."""
    everything = tuple(dims) == (2, 3)
    targets = [paths.data, paths.build, paths.record, paths.findings] if everything else [paths.build / "ldm-3d"]
    targets += [paths.checkpoints / m.checkpoint for m in demo_models(profile, dims)]
    targets += [paths.checkpoints / f"demo-{d}d-detector" for d in dims]
    targets += [paths.studies / m.study for m in demo_models(profile, dims)]
    if 3 in dims:
        # earlier 3D recipes' outputs; a study goes only if the demo build marked it (never a user's own study)
        targets += sorted(paths.checkpoints.glob("demo-3d-e*"))
        targets += sorted(p for p in paths.studies.glob("demo-3d*") if (p / DEMO_MARKER).is_file())
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def build_all(
    root: str | Path, profile: DemoProfile, fresh: bool = True, dims: Sequence[int] = (2, 3), retrain: bool = True
) -> dict[str, Any]:
    """Rebuild data, checkpoints, studies and FINDINGS.md under ``root``; returns the build record.

    With ``dims=(3,)`` only the 3D part is rebuilt (the data again, byte-identical); the record keeps the last
    full build and lists the partial rebuild under ``rebuilds``. ``retrain=False`` keeps the checkpoints and
    detectors and only generates and scans again (after a change to the scan), listed the same way."""
    paths = DemoPaths(Path(root))
    dims = tuple(sorted(dims))
    if dims not in ((2, 3), (3,), (2,)):
        raise MemoScopeError(f"--dims {dims}: choose 2, 3 or both.")
    partial = dims != (2, 3) or not retrain
    if partial and not paths.record.is_file():
        raise MemoScopeError(f"{paths.record}: no full build to add to; run `python -m tools.demo all` first.")
    if fresh and retrain:
        clean(paths, profile, dims)
    timings: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], Any]]] = [("data", lambda: build_data(paths.data))]
    if retrain:
        steps += [
            ("ldm_training", lambda: train_models(paths, profile, dims)),
            ("detector_training", lambda: train_detectors(paths, profile, dims)),
        ]
    steps.append(("generate_and_scan", lambda: generate_and_scan(paths, profile, dims)))
    started = now_utc()
    for name, step in steps:
        clock = time.perf_counter()
        logger.info("== demo: %s", name)
        step()
        timings[name] = round(time.perf_counter() - clock, 1)
    run = {
        "command": f"python -m tools.demo {'all' if retrain else 'rescan'} --profile {profile.name}"
        + ("" if dims == (2, 3) else f" --dims {' '.join(map(str, dims))}"),
        "started_at": started,
        "finished_at": now_utc(),
        "seconds": timings,
        "total_seconds": round(sum(timings.values()), 1),
        "versions": versions(),
    }
    manifests = {f"{d}d": sha256_file(paths.manifest(d)) for d in (2, 3)}
    if not partial:
        record = {"profile": asdict(profile), **run, "data_manifests": manifests}
    else:
        record = json.loads(paths.record.read_text())
        record.update(profile=asdict(profile), data_manifests=manifests)
        again = {"dims": list(dims), "retrained": retrain}
        record["rebuilds"] = [r for r in record.get("rebuilds", []) if {k: r.get(k, True) for k in again} != again]
        record["rebuilds"].append({**again, **run})
    atomic_write_json(paths.record, record)
    write_findings(paths.root, profile)
    return record


# ---------------------------------------------------------------- findings


@dataclass(frozen=True)
class ModelResult:
    """What FINDINGS.md reports for one checkpoint, read back from its study and checkpoint."""

    model: DemoModel
    summary: ScanSummary
    ldm: dict[str, Any]
    copy_pixel_corr: float | None  # median pixel correlation of flagged copies and their nearest training scan
    novel_pixel_corr: float | None
    by_patient: ByPatient  # the same numbers with patients as the unit
    quality: float | None  # median pixel r of each sample with its nearest training scan (does it make anatomy?)
    beyond: BeyondHeldout  # samples nearer to training than any validation scan (new anatomy would rarely be)
    between: int  # samples nearer to training than any validation scan, yet not called copies


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def read_result(paths: DemoPaths, model: DemoModel) -> ModelResult:
    study = paths.studies / model.study
    if not is_scanned(study):
        raise MemoScopeError(f"{study}: not scanned; run `python -m tools.demo all` (or `make demo`) first.")
    scan = ScanResults.open(study)
    ldm = read_config(paths.checkpoints / model.checkpoint).to_dict()
    pairs = scan.pairs()
    nearest = nearest_pairs(pairs)
    copies: list[float] = []
    novel: list[float] = []
    for pair in nearest:
        (copies if pair.is_copy(scan.summary.tau) else novel).append(pair.pixel_corr)
    patients = by_patient(scan, scan.summary.tau)
    beyond = nearer_than_heldout(scan, pairs)
    between = sum(beyond.heldout_max < p.similarity <= scan.summary.tau for p in nearest)
    return ModelResult(
        model,
        scan.summary,
        ldm,
        _median(copies),
        _median(novel),
        patients,
        sample_quality(pairs),
        beyond,
        between,
    )


def _frac(f: Fraction) -> str:
    return f"{f.value:.1%} ({f.count}/{f.total}; 95 % CI {f.low:.1%} to {f.high:.1%})"


def _patients(found: ByPatient) -> str:
    p = found.patients_memorized
    return f"{p.count}/{p.total} (95 % CI {p.low:.0%} to {p.high:.0%})"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _unet_loss(ldm: dict[str, Any]) -> float | None:
    losses = LDMConfig.from_dict(ldm).training.unet_losses
    return float(np.mean(losses[-5:])) if losses else None


def findings_markdown(root: str | Path, profile: DemoProfile) -> str:
    """FINDINGS.md, computed only from the committed studies, checkpoints and data manifests."""
    paths = DemoPaths(Path(root))
    results = [read_result(paths, m) for m in demo_models(profile)]
    by_key = {(r.model.dims, r.model.variant, r.model.stage): r for r in results}
    two_d = [r for r in results if r.model.dims == 2]
    first = two_d[0].summary
    inputs = first.inputs
    build = json.loads(paths.record.read_text()) if paths.record.is_file() else {}
    lines = [
        "# Findings on the embedded demo",
        "",
        f"Generated by `python -m tools.demo findings` from `studies/demo-*` and `checkpoints/demo-*` "
        f"({profile.name} profile). Do not edit by hand: rerun the command.",
        "",
        "## What was checked",
        "",
        f"- 2D: {first.inputs['train'].n} axial brain-MR slices of {inputs['train'].n_patients} training subjects; "
        f"{first.inputs['val'].n} slices of {inputs['val'].n_patients} other subjects for calibration; "
        f"{first.inputs['synthetic'].n} samples per checkpoint ({profile.steps} DDIM steps, seeds "
        f"0..{first.inputs['synthetic'].n - 1}, "
        "the same for every checkpoint).",
        f"- LDMs trained by `python -m core train-ldm` with the same seed, {profile.ae_epochs_2d} autoencoder epochs, "
        f"then the UNet saved after {profile.stages_2d[0]} (early), {profile.stages_2d[1]} (converged) and "
        f"{profile.stages_2d[2]} (over-trained) epochs; once without and once with augmentation (rotation +-5 deg, "
        "flip).",
        f"- One detector for all 2D checkpoints (`checkpoints/demo-2d-detector`, the paper's conv-residual encoder, "
        f"{profile.detector_epochs} epochs, hash `{first.detector.hash[:12]}`), so all checkpoints are measured on one "
        "scale.",
        f"- Copy call `{first.method}`; threshold: rule `{first.threshold.rule}` at percentile "
        f"{_num(first.threshold.percentile, 'g')}: {_rule_meaning(first)}.",
        "",
        "## 2D: memorization across training length and augmentation",
        "",
        "| study (in the app) | checkpoint | augmentation | UNet epochs | UNet loss (last 5) | tau | memorized "
        "training (CI over subjects) | training patients with a memorized slice | copies among samples | "
        "nearer than any validation slice (new anatomy: about) | expected FPR (copy) | median pixel r, copies / "
        "others |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in two_d:
        s = r.summary
        lines.append(
            f"| `{r.model.study}` | `{r.model.checkpoint}` ({r.model.stage}) | "
            f"{'yes' if r.model.variant == 'aug' else 'no'} | "
            f"{r.model.epoch} | "
            f"{_num(_unet_loss(r.ldm), '.4f')} | {s.tau:.3f} | {_frac(s.memorized)} | {_patients(r.by_patient)} | "
            f"{_frac(s.copies)} | {_beyond(r.beyond)} | "
            f"{s.expected_fpr_copy:.1%} | {_num(r.copy_pixel_corr, '.2f')} / {_num(r.novel_pixel_corr, '.2f')} |"
        )
    lines += ["", "### What the numbers show", ""]
    for variant, label in (("noaug", "Without augmentation"), ("aug", "With augmentation")):
        early = by_key[(2, variant, "early")].summary
        over = by_key[(2, variant, "over-trained")].summary
        lines.append(
            f"- {label}, over-training: the memorized-training fraction after {profile.stages_2d[2]} epochs "
            f"({over.memorized.value:.1%}) is {compare(early.memorized, over.memorized)} after {profile.stages_2d[0]} "
            f"({early.memorized.value:.1%}); the copy fraction ({over.copies.value:.1%}) is "
            f"{compare(early.copies, over.copies)} {early.copies.value:.1%}."
        )
    for stage in STAGES:
        plain = by_key[(2, "noaug", stage)].summary
        aug = by_key[(2, "aug", stage)].summary
        lines.append(
            f"- Augmentation, {stage}: memorized training {aug.memorized.value:.1%} with vs "
            f"{plain.memorized.value:.1%} without (with is {compare(plain.memorized, aug.memorized)} without); copies "
            f"{aug.copies.value:.1%} vs {plain.copies.value:.1%} (with is {compare(plain.copies, aug.copies)} without)."
        )
    lines += ["", verdict(by_key), ""]
    note = anatomy_note(by_key)
    if note:
        lines += [note, ""]
    lines += three_d_section(results, profile)
    lines += [
        "## How small the demo is",
        "",
        f"- {inputs['train'].n_patients} training subjects. Neighbouring slices of one volume are nearly the same "
        "image, so the effective sample size is the number of subjects, not of slices: the memorized-training "
        f"intervals resample subjects (with fewer than {MIN_RESAMPLED_GROUPS}, Wilson with the subjects as the "
        "sample size; `python -m core scan`, the Overview and the report give the same intervals), which is why they "
        "are wide. Read differences as indications, not as results.",
        "- The validation subjects were scanned differently from the training subjects (other scanners, "
        "resolutions and contrasts), so their best correlation to training, and with it the threshold, may be "
        "lower than for a validation set from the same source; `expected FPR (copy)` is the share of real "
        "validation slices that the threshold itself would call copies.",
        "- The autoencoder is small (16 to 32 channels, 16x16 latents), so samples are blurred versions of what they "
        "copy, and pixel correlation is dominated by the brain outline; the images on the Review page show both.",
        "- The detector is small and trained on the same few slices; the README's planted-copy benchmark shows what "
        "such detectors catch (exact, noisy and intensity-changed copies) and miss (shifted copies).",
        "- Dar et al. trained on thousands of scans per data set; this demo shows the workflow and the direction "
        "of effects on data anyone can rebuild, not a replication.",
        "",
    ]
    if build:
        lines += [
            "## Build",
            "",
            f"`{build['command']}` took {build['total_seconds'] / 60:.1f} min on this machine "
            f"({', '.join(f'{k.replace(chr(95), chr(32))} {v / 60:.1f} min' for k, v in build['seconds'].items())}); "
            f"torch {build['versions'].get('torch', '?')}, monai {build['versions'].get('monai', '?')}."
            + "".join(
                f" The {' and '.join(f'{d}D' for d in again['dims'])} "
                f"{'parts were' if len(again['dims']) > 1 else 'part was'} "
                f"{'rebuilt' if again.get('retrained', True) else 'sampled and scanned again'} since with "
                f"`{again['command']}` "
                f"in {again['total_seconds'] / 60:.1f} min."
                for again in build.get("rebuilds", [])
            ),
            "",
        ]
    return "\n".join(lines)


def augmentation_effect(by_key: dict[tuple[int, str, str], ModelResult], which: str) -> tuple[str, int]:
    """What augmentation did to one fraction (``memorized`` or ``copies``) across the training lengths, in words,
    and at how many lengths it lowered the fraction beyond the intervals."""

    def frac(variant: str, stage: str) -> Fraction:
        return getattr(by_key[(2, variant, stage)].summary, which)  # type: ignore[no-any-return]

    n = len(STAGES)
    lowers = sum(frac("aug", s).value < frac("noaug", s).value for s in STAGES)
    clear = sum(compare(frac("noaug", s), frac("aug", s)).startswith("clearly lower") for s in STAGES)
    name = "memorized fraction" if which == "memorized" else "copy fraction"
    if clear == n:
        text = f"a clearly lower {name} at all {n} training lengths"
    elif lowers and not clear:
        text = f"a lower {name} at {lowers} of {n} training lengths, never beyond the overlapping intervals"
    elif lowers:
        text = f"a lower {name} at {lowers} of {n} training lengths ({clear} beyond the intervals)"
    else:
        text = f"a lower {name} at none of the {n} training lengths"
    return text, clear


def verdict(by_key: dict[tuple[int, str, str], ModelResult]) -> str:
    """One paragraph: do the demo numbers agree with Dar et al.'s two findings, and how clearly? Each comparison
    names the fraction it is about."""

    def mem(variant: str, stage: str) -> Fraction:
        return by_key[(2, variant, stage)].summary.memorized

    rises = [mem(v, "over-trained").value > mem(v, "early").value for v in VARIANTS]
    clear_rises = [compare(mem(v, "early"), mem(v, "over-trained")).startswith("clearly higher") for v in VARIANTS]
    if all(clear_rises):
        training = "Over-training clearly raised the memorized fraction in both runs, as Dar et al. report"
    elif all(rises):
        clear = sum(clear_rises)
        training = "Over-training raised the memorized fraction in both runs, as Dar et al. report, " + (
            "though in neither beyond the overlapping intervals" if not clear else f"beyond the intervals in {clear}"
        )
    elif any(rises):
        training = "Over-training raised the memorized fraction in one of the two runs only"
    else:
        training = "Over-training did not raise the memorized fraction here, unlike Dar et al.'s report"
    (memorized, clear_m), (copies, clear_c) = (augmentation_effect(by_key, w) for w in ("memorized", "copies"))
    if clear_m == clear_c == len(STAGES):
        tail = ", as they report"
    elif clear_m == clear_c == 0:
        tail = "; on this demo augmentation's effect cannot be told from chance"
    else:
        tail = ""
    return f"**In short:** {training}; augmentation gave {memorized}, and {copies}{tail}."


def anatomy_note(by_key: dict[tuple[int, str, str], ModelResult]) -> str | None:
    """A sentence on stages whose samples do not look like the training anatomy (too poor to judge), or None."""
    poor = [r for r in by_key.values() if r.model.dims == 2 and r.quality is not None and r.quality < ANATOMY_FLOOR]
    if not poor:
        return None
    named = [f"`{r.model.checkpoint}` ({r.quality:.2f})" for r in poor]
    names = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return (
        f"- Sample quality: the samples of {names} do not resemble any training slice (median pixel correlation of "
        f"a sample with its nearest training slice, below {ANATOMY_FLOOR}; the Compare page shows the same measure):"
        " they are not yet brains. Their low memorization says that these "
        "models cannot make anatomy yet, not that stopping early prevents copying: such stages are too poor to "
        "judge."
    )


def three_d_section(results: list[ModelResult], profile: DemoProfile) -> list[str]:
    """FINDINGS.md's 3D section: each stage's sample quality beside its memorization, in sentences from the numbers."""
    three = [r for r in results if r.model.dims == 3]
    if not three:
        return []
    s = three[-1].summary
    lines = [
        "## 3D",
        "",
        f"- {s.inputs['train'].n} training volumes ({', '.join(f'`{x}`' for x in TRAIN_SUBJECTS_3D)}), "
        f"{s.inputs['val'].n} validation volumes ({', '.join(f'`{x}`' for x in VAL_SUBJECTS_3D)}), "
        f"{s.inputs['synthetic'].n} samples per checkpoint; one LDM ({profile.ae_epochs_3d} autoencoder epochs) saved "
        f"after {profile.stages_3d[0]} (early) and {profile.stages_3d[1]} (over-trained) UNet epochs; copy call "
        f"`{s.method}`, rule `{s.threshold.rule}` at percentile {_num(s.threshold.percentile, 'g')}: "
        f"{_rule_meaning(s)}.",
        "",
        "| study (in the app) | checkpoint | UNet epochs | UNet loss (last 5) | sample quality | tau | memorized "
        "training | copies among samples | nearer than any validation volume (new anatomy: about) | expected FPR "
        "(copy) | median pixel r, copies / others |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in three:
        m = r.summary
        lines.append(
            f"| `{r.model.study}` | `{r.model.checkpoint}` ({r.model.stage}) | {r.model.epoch} | "
            f"{_num(_unet_loss(r.ldm), '.4f')} | "
            f"{_num(r.quality, '.2f')} | {m.tau:.3f} | {_frac(m.memorized)} | {_frac(m.copies)} | "
            f"{_beyond(r.beyond)} | "
            f"{m.expected_fpr_copy:.1%} | {_num(r.copy_pixel_corr, '.2f')} / {_num(r.novel_pixel_corr, '.2f')} |"
        )
    lines += ["", "Sample quality is the median pixel correlation of a sample with its nearest training volume.", ""]
    for r in three:
        if r.quality is None or r.quality < ANATOMY_FLOOR:
            lines.append(
                f"- `{r.model.checkpoint}` ({r.model.stage}): its samples do not resemble any training volume (quality "
                f"{_num(r.quality, '.2f')}, below {ANATOMY_FLOOR}): they are not yet heads, so this stage is too poor "
                "to judge; its copy calls say nothing about memorization."
            )
        else:
            lines.append(
                f"- `{r.model.checkpoint}` ({r.model.stage}): copies {r.summary.copies.value:.1%}, memorized training "
                f"{r.summary.memorized.value:.1%}. " + _pixel_check(r.copy_pixel_corr) + " " + _novelty(r)
            )
    if len(three) == 2 and all(r.quality is not None and r.quality >= ANATOMY_FLOOR for r in three):
        early, over = three
        lines.append(
            f"- Over-training: the copy fraction after {over.model.epoch} epochs ({over.summary.copies.value:.1%}) is "
            f"{compare(early.summary.copies, over.summary.copies)} after {early.model.epoch} "
            f"({early.summary.copies.value:.1%})."
        )
    lines += [
        f"- With {s.inputs['train'].n} training volumes these numbers illustrate the 3D pipeline and are not evidence "
        "about 3D LDMs.",
        "",
    ]
    return lines


def _rule_meaning(summary: ScanSummary) -> str:
    """The threshold rule in words, with what it rests on (how many validation subjects)."""
    rule = ThresholdRule(summary.threshold.rule)
    patients = summary.inputs["val"].n_patients
    rests = f"set on {summary.inputs['val'].n} scans of {patients} validation subjects"
    if rule == ThresholdRule.HELDOUT_PATIENT:
        rests += f"; with {patients} subjects the bound is wide (Student t on {patients - 1} degrees of freedom)"
    return f"{rule.meaning}, {rests}"


def _beyond(found: BeyondHeldout) -> str:
    return f"{_frac(found.share)} ({found.expected:.0%})"


def _novelty(r: ModelResult) -> str:
    """Whether the samples that are not called copies are as new as new subjects' scans (:class:`BeyondHeldout`)."""
    b = r.beyond
    if not b.clearly_above_expected:
        return (
            f"{b.share.count} of {b.share.total} samples are nearer to a training volume than any validation volume "
            f"is (about {b.expected:.0%} expected of new anatomy): by this measure its samples are as new as new "
            "subjects' volumes."
        )
    if not r.between:
        return ""
    found = (
        f"{r.between} of the {b.share.total - r.summary.copies.count} samples not called copies are nearer to a "
        f"training volume than any validation volume is ({b.share.count} of {b.share.total} in all, 95 % CI "
        f"{b.share.low:.0%} to {b.share.high:.0%}; samples as new as a new subject's volume would give about "
        f"{b.expected:.0%})"
    )
    if r.summary.copies.count == 0:
        return f"Yet {found}: this stage draws variations of the training heads, not new anatomy."
    return f"{found}: they too are nearer to the training heads than new anatomy would be."


def _pixel_check(median_r: float | None) -> str:
    """Whether the pixel-space cross-check supports the detector's copy calls."""
    if median_r is None:
        return "Nothing was flagged."
    if median_r >= 0.95:
        return "The pixel-space cross-check supports the calls: the flagged samples reproduce their sources."
    if median_r >= 0.8:
        return (
            "The pixel-space cross-check supports the calls only in part: the flagged samples resemble their sources "
            "(a shared head outline alone correlates highly at 32^3) without reproducing them, as blurred copies "
            "would; look at the pairs on the Review page before calling them copies."
        )
    return (
        "The pixel-space cross-check does not support the calls: the flagged samples do not reproduce their sources "
        "pixel by pixel, so treat them as unconfirmed (a threshold calibrated on three volumes is not one a scientist "
        "could defend)."
    )


def write_findings(root: str | Path, profile: DemoProfile) -> Path:
    paths = DemoPaths(Path(root))
    atomic_write_text(paths.findings, findings_markdown(root, profile))
    return paths.findings


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.demo all|build-data|findings``: rebuild the demo, or one part of it."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tools.demo", description="Rebuild MemoScope's embedded demo.")
    parser.add_argument(
        "action",
        choices=("all", "rescan", "build-data", "findings"),
        help="all: everything from nothing; rescan: new samples and scans from the committed checkpoints; "
        "build-data: data/demo only; findings: docs/FINDINGS.md",
    )
    parser.add_argument(
        "--profile", choices=tuple(PROFILES), default="full", help="full: the committed demo; quick: a CI-sized check"
    )
    parser.add_argument("--root", default=".", help="folder holding data/, checkpoints/, studies/ and docs/")
    parser.add_argument("--resume", action="store_true", help="keep what an interrupted build left (training resumes)")
    parser.add_argument(
        "--dims", type=int, nargs="+", choices=(2, 3), default=[2, 3], help="rebuild only the 2D or the 3D part"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    profile, paths = PROFILES[args.profile], DemoPaths(Path(args.root))
    try:
        if args.action == "build-data":
            counts = build_data(paths.data)
            print(
                f"{sum(c['slices_2d'] for c in counts.values())} slices and {len(counts)} volumes "
                f"of {len(counts)} subjects -> {paths.data}"
            )
        elif args.action == "findings":
            print(f"wrote {write_findings(paths.root, profile)}")
        else:
            retrain = args.action == "all"
            record = build_all(paths.root, profile, fresh=not args.resume, dims=args.dims, retrain=retrain)
            run = record["rebuilds"][-1] if tuple(sorted(args.dims)) != (2, 3) or not retrain else record
            print(f"demo built in {run['total_seconds'] / 60:.1f} min; findings in {paths.findings}")
    except MemoScopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
