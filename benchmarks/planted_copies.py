"""Choose the detector's augmentation policy on a planted-copy test built from real brain MR slices.

Training, validation and unseen subjects are disjoint. Copies of training slices (exact, noise,
blur, intensity, shift, rotation, mixed) are planted among real unseen-subject slices; each
policy's detector is calibrated with the paper rule on the validation subjects. Prints recall per
change, the share of unseen slices flagged, and F1. Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/planted_copies.py [--epochs 30 100] [--per-kind 10] [--write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from core.detect.detector import DetectorConfig, embed, train_detector
from core.detect.metrics import ThresholdRule, calibrate, is_copy
from core.detect.search import search_all
from core.io.data import ImageSet
from core.io.preprocessing import PreprocessSpec
from core.io.sample_data import REAL_VOLUMES, axial_slices
from tools.planted import PERTURBATIONS, PlantedSet, plant_copies
from tools.readme_tables import markdown_table, write_result

TRAIN = ("mni152", "nibabel-example4d")
VAL = ("nibabel-anatomical", "dipy-aniso-vox")
UNSEEN = ("dipy-s0-10slices", "dipy-piesno")


def _slices(subjects: tuple[str, ...], step: int) -> tuple[np.ndarray, list[str]]:
    arrays, patients = [], []
    for volume in REAL_VOLUMES:
        if volume.subject in subjects:
            s = axial_slices(volume, 64, step=step if volume.subject == "mni152" else 1)
            arrays.append(s)
            patients += [volume.subject] * len(s)
    return np.concatenate(arrays), patients


def _row(policy: str, epochs: int, train: ImageSet, val: ImageSet, planted: PlantedSet, seed: int) -> list[str]:
    config = DetectorConfig.for_dims(2, [64, 64], augmentation=policy, epochs=epochs, seed=seed)
    start = time.perf_counter()
    detector = train_detector(train, val, config)
    seconds = time.perf_counter() - start
    e_train, e_val, e_syn = (embed(detector.model, x) for x in (train.images, val.images, planted.images))
    tables = search_all(e_train, e_val, e_syn)
    tau = calibrate(ThresholdRule.PAPER, tables.train_to_val.best, tables.val_to_train.best, 95.0).value
    flagged = is_copy(tables.synthetic_to_train.best, tau)
    planted_copy = planted.source_index >= 0
    # a copy counts as found only when its nearest training image is its source
    found = flagged & (tables.synthetic_to_train.index[:, 0] == planted.source_index)
    kinds = np.array(planted.kind)
    tp, fp = int(found.sum()), int((flagged & ~planted_copy).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / int(planted_copy.sum())
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return [
        policy,
        str(epochs),
        *(f"{found[kinds == k].mean():.2f}" for k in PERTURBATIONS),
        f"{flagged[~planted_copy].mean():.2f} ({fp}/{int((~planted_copy).sum())})",
        f"{precision:.2f}",
        f"{recall:.2f}",
        f"{f1:.2f}",
        f"{tau:.3f}",
        f"{seconds:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, nargs="+", default=[30, 100], help="detector training lengths to compare")
    parser.add_argument("--per-kind", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write", action="store_true", help="write benchmarks/results/planted_copies.md for the README"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = PreprocessSpec((64, 64))
    x_train, p_train = _slices(TRAIN, step=2)
    x_val, p_val = _slices(VAL, step=1)
    x_unseen, _ = _slices(UNSEEN, step=1)
    train = ImageSet([f"t{i}" for i in range(len(x_train))], p_train, x_train, spec, "train")
    val = ImageSet([f"v{i}" for i in range(len(x_val))], p_val, x_val, spec, "val")
    planted = plant_copies(x_train, x_unseen, args.per_kind, seed=args.seed)
    print(
        f"train {len(train)} slices / val {len(val)} / planted {int((planted.source_index >= 0).sum())} copies "
        f"+ {len(x_unseen)} unseen"
    )
    header = ["policy", "epochs", *PERTURBATIONS, "unseen flagged", "precision", "recall", "F1", "tau", "train s"]
    print(" | ".join(header))
    rows = []
    for epochs in args.epochs:
        for policy in ("paper", "strong"):
            rows.append(_row(policy, epochs, train, val, planted, args.seed))
            print(" | ".join(rows[-1]), flush=True)
    if args.write:
        command = "PYTHONPATH=. .venv/bin/python benchmarks/planted_copies.py --write --epochs " + " ".join(
            map(str, args.epochs)
        )
        print(f"wrote {write_result('planted_copies', markdown_table(header, rows), command)}")


if __name__ == "__main__":
    main()
