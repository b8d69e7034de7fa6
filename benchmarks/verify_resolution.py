"""Verification on the embedding's thumbnail or at the scans' own resolution: what each finds and what it costs.

Real brain MR (training, validation and unseen subjects disjoint, as in ``planted_copies.py``) is prepared at a
fine grid (2D: 256 px slices; 3D: 64^3 cubes). Copies of training scans are planted on that grid with every change
at level 1 (strengths scaled with the grid, see ``core/detect/planted.py``), among real unseen-subject scans, plus
*fine-detail lookalikes*: a training scan whose coarse anatomy is kept and whose fine detail (structure finer than
a few pixels of the fine grid) is replaced by another's, which is what a 64 px thumbnail cannot see. One detector
is trained on the embedding grid (2D 64 px, 3D 32^3, images resized exactly as loading does); the verified call
then decides twice on the same candidates' images, once on the embedding grid and once on the fine grid, each
calibrated by the scan's default rule (heldout-patient 95) on its own null. Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/verify_resolution.py [--dims 2 3] [--epochs 30] [--per-kind 10] [--write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from core.detect.detector import DetectorConfig, embed, train_detector
from core.detect.metrics import ThresholdRule, calibrate, is_copy, wilson_interval
from core.detect.planted import CHANGES, PlantedSet, plant_copies
from core.detect.verify import MatchMethod, VerifyConfig, best_match
from core.io.load import ImageSet
from core.io.preprocessing import DEFAULT_SIZE, PreprocessSpec, resize_images
from core.io.sample_data import REAL_VOLUMES, axial_slices, volume_cube
from tools.readme_tables import markdown_table, write_result

TRAIN = ("mni152", "nibabel-example4d")
VAL = ("nibabel-anatomical", "dipy-aniso-vox")
UNSEEN = ("dipy-s0-10slices", "dipy-piesno")
FINE = {2: 256, 3: 64}
RULE, PERCENTILE = ThresholdRule.HELDOUT_PATIENT, 95.0


def _items(subjects: tuple[str, ...], dims: int) -> tuple[np.ndarray, list[str]]:
    """2D: non-empty axial slices at 256 px; 3D: 8 overlapping 64^3 cubes of each subject's 96^3 volume."""
    arrays, patients = [], []
    for volume in REAL_VOLUMES:
        if volume.subject not in subjects:
            continue
        if dims == 2:
            items = axial_slices(volume, FINE[2], step=2 if volume.subject == "mni152" else 1)
        else:
            cube, side, offsets = volume_cube(volume, 96)[0], FINE[3], (0, 32)
            items = np.stack(
                [
                    cube[None, i : i + side, j : j + side, k : k + side]
                    for i in offsets
                    for j in offsets
                    for k in offsets
                ]
            )
        arrays.append(items)
        patients += [volume.subject] * len(items)
    return np.concatenate(arrays).astype(np.float32), patients


def _detail(x: np.ndarray) -> np.ndarray:
    """Structure finer than one voxel of the embedding grid (a Gaussian of that many fine-grid voxels removed)."""
    return x - ndimage.gaussian_filter(x, FINE[x.ndim] / DEFAULT_SIZE[x.ndim])


def lookalikes(train: np.ndarray, donors: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` training scans with their fine detail replaced by a donor's: the same anatomy at thumbnail scale,
    other structure below one voxel of the embedding grid. Returns the images and their source rows."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(train), size=min(n, len(train)), replace=False)
    out = []
    for t in rows:
        donor = donors[rng.integers(len(donors)), 0]
        out.append(np.clip(train[t, 0] - _detail(train[t, 0]) + _detail(donor), -1.0, 1.0)[None])
    return np.stack(out).astype(np.float32), rows.astype(np.int64)


def _rate(count: int, total: int) -> str:
    low, high = wilson_interval(count, total)
    return f"{count}/{total} ({count / total:.2f} [{low:.2f}, {high:.2f}])"


def run_dims(dims: int, epochs: int, per_kind: int, seed: int) -> tuple[list[list[str]], str]:
    coarse = PreprocessSpec((DEFAULT_SIZE[dims],) * dims)
    x_train, p_train = _items(TRAIN, dims)
    x_val, p_val = _items(VAL, dims)
    x_unseen, _ = _items(UNSEEN, dims)
    planted = plant_copies(x_train, x_unseen, per_kind, seed=seed + 1, level=1)
    alike, alike_rows = lookalikes(x_train, np.concatenate([x_val, x_unseen]), per_kind, seed)
    fine = {"train": x_train, "val": x_val, "planted": planted.images, "alike": alike}
    small = {name: resize_images(images, coarse) for name, images in fine.items()}
    train = ImageSet([f"t{i}" for i in range(len(x_train))], p_train, small["train"], coarse, "train")
    val = ImageSet([f"v{i}" for i in range(len(x_val))], p_val, small["val"], coarse, "val")
    config = DetectorConfig.for_dims(dims, list(coarse.spatial_size), epochs=epochs, seed=seed)
    start = time.perf_counter()
    detector = train_detector(train, val, config)
    train_s = time.perf_counter() - start
    vectors = {name: embed(detector.model, images) for name, images in small.items()}
    info = (
        f"{dims}D: {len(x_train)} training / {len(x_val)} validation scans of {len(set(p_train))}/{len(set(p_val))} "
        f"subjects at {FINE[dims]} per side; {int(planted.is_copy.sum())} planted copies (level 1) among "
        f"{int((~planted.is_copy).sum())} unseen-subject scans; {len(alike)} fine-detail lookalikes; detector "
        f"{config.arch} on {DEFAULT_SIZE[dims]} per side, {epochs} epochs, {train_s:.0f} s"
    )
    print(info, flush=True)
    rows = []
    for label, images in ((f"{DEFAULT_SIZE[dims]} (embedding grid)", small), (f"{FINE[dims]} (own resolution)", fine)):
        rows.append(_row(dims, label, vectors, images, planted, alike_rows, p_val))
        print(" | ".join(rows[-1]), flush=True)
    return rows, info


def _row(
    dims: int,
    label: str,
    vectors: dict[str, np.ndarray],
    images: dict[str, np.ndarray],
    planted: PlantedSet,
    alike_rows: np.ndarray,
    val_patients: list[str],
) -> list[str]:
    config = VerifyConfig()  # the Verifier adapts its band and batches to the grid it is given

    def nearest(query: str) -> tuple[np.ndarray, np.ndarray]:
        found = best_match(
            MatchMethod.VERIFIED, vectors[query], vectors["train"], images[query], images["train"], config
        )
        return found.best, found.index[:, 0]

    start = time.perf_counter()
    null, _ = nearest("val")
    tau = calibrate(RULE, null, null, PERCENTILE, val_patients=val_patients).value
    best, index = nearest("planted")
    alike_best, alike_index = nearest("alike")
    seconds = time.perf_counter() - start
    flagged = is_copy(best, tau)
    found = flagged & (index == planted.source_index)
    kinds = np.array(planted.kind)
    copy = planted.is_copy
    alike_flagged = is_copy(alike_best, tau) & (alike_index == alike_rows)
    queries = len(null) + len(best) + len(alike_best)
    return [
        f"{dims}D",
        label,
        *(f"{found[kinds == k].mean():.2f}" for k in CHANGES),
        _rate(int((flagged & ~copy).sum()), int((~copy).sum())),
        f"{roc_auc_score(copy, best):.3f}",
        f"{np.median(best[copy]):.3f}",
        f"{np.median(alike_best):.3f}",
        _rate(int(alike_flagged.sum()), len(alike_flagged)),
        f"{tau:.3f}",
        f"{seconds:.1f}",
        f"{1000 * seconds / queries:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--epochs", type=int, default=30, help="detector training epochs")
    parser.add_argument("--per-kind", type=int, default=10, help="planted copies per change (and lookalikes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/verify_resolution.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    header = [
        "dims",
        "verified on",
        *CHANGES,
        "unseen flagged",
        "AUROC",
        "copies' median score",
        "lookalikes' median score",
        "lookalikes called copies",
        "tau",
        "verify s",
        "ms per query",
    ]
    rows, infos = [], []
    for dims in args.dims:
        found, info = run_dims(dims, args.epochs, args.per_kind, args.seed)
        rows += found
        infos.append(info)
    if args.write:
        command = (
            f"PYTHONPATH=. .venv/bin/python benchmarks/verify_resolution.py --write --dims "
            f"{' '.join(map(str, args.dims))} --epochs {args.epochs} --per-kind {args.per_kind}"
        )
        notes = "\n" + "\n".join(f"- {i}" for i in infos) + "\n"
        print(f"wrote {write_result('verify_resolution', markdown_table(header, rows) + notes, command)}")


if __name__ == "__main__":
    main()
