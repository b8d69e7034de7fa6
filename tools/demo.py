"""The embedded demo: real scans from pip packages, LDMs trained by our own trainer, scanned by our engine.

``python -m tools.demo all`` rebuilds, from nothing and in this order:

1. ``data/demo/``: 2D axial brain-MR slices (16-bit PNG) and 3D volumes (NIfTI) from the real
   scans in :data:`core.io.sample_data.REAL_VOLUMES`, split by subject, with manifests and SOURCES.md;
2. ``checkpoints/demo-*``: 2D LDMs (without and with augmentation, each saved early, converged and
   over-trained) and a 3D LDM, trained with ``python -m core train-ldm``, and one contrastive
   detector per data set (``train-detector``);
3. ``studies/demo-*``: samples of every checkpoint (``generate``, the same seeds for all) and their
   scans (``scan``, one detector per data set so that checkpoints are compared on one scale);
4. ``docs/FINDINGS.md`` from the committed studies (:mod:`tools.findings`).

Every step calls the engine's own functions with the same configs the command line builds, so the
demo is built exactly as a user would build it. Each step is a function of the paths it is given;
nothing is kept between steps but files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
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
from core.generative.ldm import networks_config
from core.generative.sample import GenerateConfig, generate, to_uint16
from core.generative.train import TrainLDMConfig, train_ldm
from core.io.discover import Role
from core.io.load import load_set
from core.io.preprocessing import PreprocessSpec, config_from_options
from core.io.sample_data import REAL_VOLUMES, RealVolume, axial_slices, volume_cube
from core.privacy.membership import DEFAULT_TIMESTEPS
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
    images = load_set(manifest, spec, role=Role.TRAIN)
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


def generate_and_scan(
    paths: DemoPaths, profile: DemoProfile, dims: Sequence[int] = (2, 3), regenerate: bool = True
) -> None:
    """Samples of every checkpoint (seed 0 for all: common random numbers) and their scans. ``regenerate=False``
    keeps each study's committed samples and scans them again into a fresh study (after a change to the scan
    alone: sampling on another CPU differs in the last bits, which would change every sample file)."""
    import tempfile

    r = paths.root
    for model in demo_models(profile, dims):
        study = paths.studies / model.study
        synthetic = _rel(study / "synthetic", r)
        if not regenerate:
            if not (study / "synthetic").is_dir():
                raise MemoScopeError(f"{study / 'synthetic'}: no committed samples to scan again; run rescan.")
            with tempfile.TemporaryDirectory(dir=paths.studies) as keep:
                shutil.move(str(study / "synthetic"), keep)
                shutil.rmtree(study)
                study.mkdir()
                shutil.move(str(Path(keep) / "synthetic"), study)
        elif study.exists():
            shutil.rmtree(study)
        if regenerate:
            _generate(paths, profile, model, synthetic)
        _scan(paths, profile, model, synthetic, study)
        mark_demo(study)


def _generate(paths: DemoPaths, profile: DemoProfile, model: DemoModel, synthetic: str) -> None:
    """One checkpoint's samples into ``synthetic`` (seed 0, on the CPU)."""
    r = paths.root
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


def _scan(paths: DemoPaths, profile: DemoProfile, model: DemoModel, synthetic: str, study: Path) -> None:
    """The scan of one demo study, with the demo's detector and settings."""
    r = paths.root
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
    root: str | Path,
    profile: DemoProfile,
    fresh: bool = True,
    dims: Sequence[int] = (2, 3),
    retrain: bool = True,
    regenerate: bool = True,
) -> dict[str, Any]:
    """Rebuild data, checkpoints, studies and FINDINGS.md under ``root``; returns the build record.

    With ``dims=(3,)`` only the 3D part is rebuilt (the data again, byte-identical); the record keeps the last
    full build and lists the partial rebuild under ``rebuilds``. ``retrain=False`` keeps the checkpoints and
    detectors and only generates and scans again, listed the same way; ``regenerate=False`` (with ``retrain=False``)
    also keeps the committed samples and only scans them again (after a change to the scan alone)."""
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
    steps.append(("generate_and_scan", lambda: generate_and_scan(paths, profile, dims, regenerate or retrain)))
    started = now_utc()
    for name, step in steps:
        clock = time.perf_counter()
        logger.info("== demo: %s", name)
        step()
        timings[name] = round(time.perf_counter() - clock, 1)
    run = {
        "command": f"python -m tools.demo {'all' if retrain else 'rescan' if regenerate else 'rescore'} "
        f"--profile {profile.name}" + ("" if dims == (2, 3) else f" --dims {' '.join(map(str, dims))}"),
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
        again = {"dims": list(dims), "retrained": retrain, "regenerated": regenerate or retrain}
        record["rebuilds"] = [r for r in record.get("rebuilds", []) if {k: r.get(k, True) for k in again} != again]
        record["rebuilds"].append({**again, **run})
    atomic_write_json(paths.record, record)
    from tools.findings import write_findings  # the writer reads this recipe: imported here, never the reverse

    write_findings(paths.root, profile)
    return record


def privacy_tests(paths: DemoPaths, profile: DemoProfile, dims: Sequence[int] = (2, 3)) -> list[tuple[str, Any]]:
    """The privacy tests of every demo study, in place, on the committed scans (seed 0, on the CPU): what a rescan's
    own privacy step writes, without sampling and scanning anew. The denoising errors are computed afresh (a
    temporary cache), so the recorded seconds are a first run's. Returns (study, report) pairs."""
    import tempfile

    from core.privacy.membership import MembershipConfig
    from core.study.privacy import run_privacy

    done = []
    with tempfile.TemporaryDirectory(prefix="memoscope-privacy-") as cache:
        before = os.environ.get("MEMOSCOPE_CACHE_DIR")
        os.environ["MEMOSCOPE_CACHE_DIR"] = cache
        try:
            for model in demo_models(profile, dims):
                study = _rel(paths.studies / model.study, paths.root)
                logger.info("privacy -> %s", study)
                report = run_privacy(study, MembershipConfig(seed=0), "cpu", progress=logged(logger, silent))
                done.append((study, report))
        finally:
            if before is None:
                os.environ.pop("MEMOSCOPE_CACHE_DIR", None)
            else:
                os.environ["MEMOSCOPE_CACHE_DIR"] = before
    return done


PRIVACY_TESTS = (
    (
        "Could someone holding the weights tell who was in training?",
        "membership: each scan's denoising error through the checkpoint at timesteps "
        f"{', '.join(map(str, DEFAULT_TIMESTEPS))} with fixed seeded noise; AUROC training vs held-out scans, "
        "p-value from permuting the patients' labels, interval by a bootstrap over patients (from 10 a side), TPR "
        "at 1 % and 5 % FPR",
        "Carlini et al. 2023; SecMI (Duan et al. 2023); PIA (Kong et al. 2024)",
        "membership",
    ),
    (
        "Do the samples as a whole stay closer to training than new scans do?",
        "C_T over k-means cells of the training embeddings (strongly negative: copying); authenticity (share of "
        "samples farther from their nearest training scan than it is from its own neighbour, against held-out "
        "scans' share); nearest-record share against an equal-sized holdout (about 1/2 when samples are new)",
        "Meehan, Chaudhuri and Dasgupta 2020; Alaa et al. 2022; sdmetrics DCROverfittingProtection",
        "distribution tests",
    ),
)


def privacy_cost_table(done: list[tuple[str, Any]]) -> str:
    """What each privacy test answers, its anchor and what it cost per demo study here (the range of seconds over
    the 2D studies, and over the 3D ones, with the sets' sizes: the same data in every study of one kind)."""
    from core.study.results import read_summary
    from tools.readme_tables import markdown_table

    def cost(key: str, dims: int) -> str:
        runs = [(r, read_summary(study)) for study, r in done if Path(study).name.startswith(f"demo-{dims}d")]
        if not runs:
            return ""
        seconds = sorted(r.timings.get(key, 0.0) for r, _ in runs)
        sizes = {(s.inputs["train"].n, s.inputs["val"].n, s.inputs["synthetic"].n) for _, s in runs}
        train, val, synthetic = (" or ".join(sorted({str(x[i]) for x in sizes})) for i in range(3))
        what = f"{train} + {val} scans" if key == "membership" else f"{synthetic} samples"
        span = f"{seconds[0]:.1f}" if len(seconds) == 1 else f"{seconds[0]:.1f}-{seconds[-1]:.1f}"
        return f"{dims}D: {span} s ({what}; {len(seconds)} studies)"

    rows = [
        [question, test, anchor, "; ".join(c for c in (cost(key, 2), cost(key, 3)) if c)]
        for question, test, anchor, key in PRIVACY_TESTS
    ]
    return markdown_table(["question", "test", "anchor", "cost per demo study on this CPU"], rows)


# ---------------------------------------------------------------- findings


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.demo all|build-data|findings``: rebuild the demo, or one part of it."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m tools.demo", description="Rebuild MemoScope's embedded demo.")
    parser.add_argument(
        "action",
        choices=("all", "rescan", "rescore", "build-data", "privacy", "findings"),
        help="all: everything from nothing; rescan: new samples and scans from the committed checkpoints; "
        "rescore: new scans of the committed samples (after a change to the scan alone); "
        "build-data: data/demo only; privacy: the privacy tests of the committed scans (run from the repository "
        "root); findings: docs/FINDINGS.md",
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
        elif args.action == "privacy":
            from tools.findings import write_findings
            from tools.readme_tables import write_result

            done = privacy_tests(paths, profile, args.dims)
            dims = "" if sorted(args.dims) == [2, 3] else f" --dims {' '.join(map(str, args.dims))}"
            command = f"python -m tools.demo privacy{dims}"
            cost = write_result("privacy_tests", privacy_cost_table(done), command, "One process on the CPU.")
            print(f"wrote privacy.json in each demo study, {cost} and {write_findings(paths.root, profile)}")
        elif args.action == "findings":
            from tools.findings import write_findings

            print(f"wrote {write_findings(paths.root, profile)}")
        else:
            retrain = args.action == "all"
            record = build_all(
                paths.root, profile, not args.resume, args.dims, retrain, regenerate=args.action != "rescore"
            )
            run = record["rebuilds"][-1] if tuple(sorted(args.dims)) != (2, 3) or not retrain else record
            print(f"demo built in {run['total_seconds'] / 60:.1f} min; findings in {paths.findings}")
    except MemoScopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
