"""Does the copy call find changed copies and spare unseen patients? A planted-copy test on real brain MR, 2D and 3D.

Training, validation and unseen subjects are disjoint. Copies of training images (exact, noise, blur,
intensity, shift, rotation, elastic warp, mixed; strength levels 1-3, see ``core/detect/planted.py``) are planted
among real images of the unseen subjects. One detector per dimensionality (the scan's default: strong
augmentation) is trained on the training subjects; both copy calls are then run on the same embeddings:

- ``paper``: the embedding correlation decides, tau = 95th percentile of training -> nearest validation;
- ``verified`` (the scan's default): embedding + blurred-pixel retrieval, alignment verification decides,
  tau from validation -> training (the null built like the test statistic): its 95th percentile (``heldout``),
  a 95 % upper confidence bound on it (``heldout-ucb``), or the bound a scan of a new patient exceeds 5 % of the
  time (``heldout-patient``, the default).

A copy counts as found only when it is flagged *and* its nearest training image is its source. Intervals:
Wilson for rates, percentile bootstrap over planted images for F1. Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/planted_copies.py [--dims 2 3] [--epochs 30] [--per-kind 10] [--write]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from core.detect.detector import DetectorConfig, embed, train_detector
from core.detect.metrics import ThresholdRule, calibrate, crossfit_fpr, is_copy, min_null_size, wilson_interval
from core.detect.planted import CHANGES, LEVELS, PlantedSet, plant_copies
from core.detect.search import Neighbors
from core.detect.verify import MatchMethod, background_scores, best_match
from core.io.load import ImageSet
from core.io.preprocessing import PreprocessSpec
from core.io.sample_data import REAL_VOLUMES, axial_slices, volume_cube
from tools.readme_tables import markdown_table, write_result

TRAIN = ("mni152", "nibabel-example4d")
VAL = ("nibabel-anatomical", "dipy-aniso-vox")
UNSEEN = ("dipy-s0-10slices", "dipy-piesno")
RULES = {
    MatchMethod.PAPER: (ThresholdRule.PAPER,),
    MatchMethod.VERIFIED: (ThresholdRule.HELDOUT, ThresholdRule.HELDOUT_UCB, ThresholdRule.HELDOUT_PATIENT),
}
PERCENTILE = 95.0


def _items(subjects: tuple[str, ...], dims: int) -> tuple[np.ndarray, list[str]]:
    """2D: non-empty axial 64x64 slices (every 2nd of the template); 3D: 64 overlapping 32^3 cubes per subject
    (a 56^3 volume at offsets 0, 8, 16, 24 along each axis: several scans per patient, 8 voxels apart)."""
    arrays, patients = [], []
    for volume in REAL_VOLUMES:
        if volume.subject not in subjects:
            continue
        if dims == 2:
            items = axial_slices(volume, 64, step=2 if volume.subject == "mni152" else 1)
        else:
            cube = volume_cube(volume, 56)[0]
            offsets = (0, 8, 16, 24)
            items = np.stack(
                [cube[None, i : i + 32, j : j + 32, k : k + 32] for i in offsets for j in offsets for k in offsets]
            )
        arrays.append(items)
        patients += [volume.subject] * len(items)
    return np.concatenate(arrays).astype(np.float32), patients


@dataclass
class Scored:
    """One copy call's scores: its null (the rule's calibration sample) and the planted sets' nearest training."""

    null: np.ndarray  # the rule's null: training -> nearest validation (paper) or validation -> training (heldout)
    val_to_train: np.ndarray
    planted: dict[int, Neighbors]  # by level


def _score(
    method: MatchMethod,
    vectors: dict[str, np.ndarray],
    images: dict[str, np.ndarray],
    planted: dict[int, PlantedSet],
    planted_vectors: dict[int, np.ndarray],
) -> Scored:
    def run(q_vec: np.ndarray, q_img: np.ndarray, db: str) -> Neighbors:
        return best_match(method, q_vec, vectors[db], q_img, images[db])

    val_to_train = run(vectors["val"], images["val"], "train").best
    # the paper's rule calibrates on training -> nearest validation; the held-out rules on validation -> training
    null = run(vectors["train"], images["train"], "val").best if method == MatchMethod.PAPER else val_to_train
    found = {lvl: run(planted_vectors[lvl], p.images, "train") for lvl, p in planted.items()}
    return Scored(null, val_to_train, found)


def _normalised(
    scored: Scored,
    vectors: dict[str, np.ndarray],
    images: dict[str, np.ndarray],
    val_patients: list[str],
    planted: dict[int, PlantedSet],
    planted_vectors: dict[int, np.ndarray],
) -> Scored:
    """The verified scores minus each query's background score (SSCD style; background = the validation patients,
    built symmetrically for the null and the planted sets: see ``background_scores``)."""

    def background(q_vec: np.ndarray, q_img: np.ndarray, own: list[str] | None) -> np.ndarray:
        return background_scores(q_vec, q_img, vectors["val"], images["val"], val_patients, query_patients=own)

    null = scored.val_to_train - background(vectors["val"], images["val"], val_patients)
    found = {}
    for level, nn in scored.planted.items():
        shift = background(planted_vectors[level], planted[level].images, None)
        found[level] = Neighbors((nn.similarity - shift[:, None]).astype(np.float32), nn.index)
    return Scored(null, null, found)


def _bootstrap_f1(found: np.ndarray, flagged: np.ndarray, is_copy_: np.ndarray, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(1000):
        i = rng.integers(0, len(found), len(found))
        tp, n_flag, n_copy = found[i].sum(), flagged[i].sum(), is_copy_[i].sum()
        p, r = tp / max(n_flag, 1), tp / max(n_copy, 1)
        values.append(2 * p * r / max(p + r, 1e-12))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _rate(count: int, total: int) -> str:
    low, high = wilson_interval(count, total)
    return f"{count / total:.2f} [{low:.2f}, {high:.2f}]"


def _rows(
    dims: int,
    method: str,
    rule: ThresholdRule,
    scored: Scored,
    planted: dict[int, PlantedSet],
    val_patients: list[str],
) -> tuple[list[str], dict[int, dict[str, tuple[int, int]]]]:
    tau = calibrate(rule, scored.null, scored.val_to_train, PERCENTILE, val_patients=val_patients).value
    fpr = crossfit_fpr(scored.val_to_train, val_patients, PERCENTILE, rule) if rule.uses_heldout_null else None
    headline: list[str] = []
    sweep = {}
    for level, p in planted.items():
        nn = scored.planted[level]
        flagged = is_copy(nn.best, tau)
        found = flagged & (nn.index[:, 0] == p.source_index)
        kinds = np.array(p.kind)
        sweep[level] = {k: (int(found[kinds == k].sum()), int((kinds == k).sum())) for k in CHANGES}
        if level != 1:
            continue
        copy = p.is_copy
        tp, n_flag, n_copy = int(found.sum()), int(flagged.sum()), int(copy.sum())
        fp_unseen = int((flagged & ~copy).sum())
        precision, recall = tp / max(n_flag, 1), tp / n_copy
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        low, high = _bootstrap_f1(found, flagged, copy, 0)
        headline = [
            f"{dims}D",
            method,
            f"{rule} {PERCENTILE:g}",
            *(f"{found[kinds == k].mean():.2f}" for k in CHANGES),
            _rate(fp_unseen, int((~copy).sum())),
            "-" if fpr is None else f"{fpr.value:.2f} [{fpr.low:.2f}, {fpr.high:.2f}]",
            f"{precision:.2f}",
            _rate(tp, n_copy),
            f"{f1:.2f} [{low:.2f}, {high:.2f}]",
            f"{roc_auc_score(copy, nn.best):.3f}",
            f"{tau:.3f}",
        ]
    return headline, sweep


def run_dims(
    dims: int,
    epochs: int,
    per_kind: int,
    seed: int,
    background: bool = False,
    overrides: dict[str, Any] | None = None,
) -> tuple[list[list[str]], list[list[str]], str]:
    """The headline rows, the sweep rows and a line describing the sets and the detector (``overrides``: of
    :class:`DetectorConfig`, e.g. a step budget or the untrained ``pixels`` encoder)."""
    spec = PreprocessSpec((64, 64) if dims == 2 else (32, 32, 32))
    x_train, p_train = _items(TRAIN, dims)
    x_val, p_val = _items(VAL, dims)
    x_unseen, _ = _items(UNSEEN, dims)
    train = ImageSet([f"t{i}" for i in range(len(x_train))], p_train, x_train, spec, "train")
    val = ImageSet([f"v{i}" for i in range(len(x_val))], p_val, x_val, spec, "val")
    planted = {level: plant_copies(x_train, x_unseen, per_kind, seed=seed + level, level=level) for level in LEVELS}
    config = DetectorConfig.for_dims(dims, list(spec.spatial_size), epochs=epochs, seed=seed, **(overrides or {}))
    start = time.perf_counter()
    detector = train_detector(train, val, config)
    train_s = time.perf_counter() - start
    trained = detector.steps_trained
    vectors = {"train": embed(detector.model, x_train), "val": embed(detector.model, x_val)}
    images = {"train": x_train, "val": x_val}
    planted_vectors = {level: embed(detector.model, p.images) for level, p in planted.items()}
    n = planted[1]
    info = (
        f"{dims}D: {len(x_train)} training / {len(x_val)} validation items of {len(set(p_train))}/"
        f"{len(set(p_val))} subjects; {int(n.is_copy.sum())} planted copies per level among "
        f"{int((~n.is_copy).sum())} unseen-subject items; detector {config.arch}, {trained} steps (at most {epochs} "
        f"epochs, {config.max_steps} steps), {train_s:.0f} s"
    )
    print(info, flush=True)
    headline, sweep_rows = [], []
    variants = [(m, str(m)) for m in (MatchMethod.PAPER, MatchMethod.VERIFIED)]
    if background:
        variants.append((MatchMethod.VERIFIED, "verified+background"))
    scores: dict[MatchMethod, tuple[Scored, float]] = {}  # each copy call scored once, its seconds kept
    for method, label in variants:
        start = time.perf_counter()
        if method not in scores:
            found = _score(method, vectors, images, planted, planted_vectors)
            scores[method] = (found, time.perf_counter() - start)
        scored, seconds = scores[method]
        if label.endswith("+background"):  # the verified scores above, each minus its background score
            start = time.perf_counter()
            scored = _normalised(scored, vectors, images, p_val, planted, planted_vectors)
            seconds += time.perf_counter() - start
        for rule in RULES[method]:
            needed = min_null_size(PERCENTILE, rule)
            if len(scored.val_to_train) < needed:
                print(f"{dims}D {method} {rule}: needs {needed} validation items, has {len(scored.val_to_train)}")
                headline.append([f"{dims}D", label, f"{rule} {PERCENTILE:g}", f"needs {needed} validation items"])
                continue
            row, sweep = _rows(dims, label, rule, scored, planted, p_val)
            row.append(f"{seconds:.1f}")
            headline.append(row)
            print(" | ".join(row), flush=True)
            for kind in CHANGES:
                counts = (f"{sweep[lv][kind][0]}/{sweep[lv][kind][1]}" for lv in LEVELS)
                sweep_rows.append([f"{dims}D", label, str(rule), kind, *counts])
    return headline, sweep_rows, info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--epochs", type=int, default=30, help="detector training epochs")
    parser.add_argument("--per-kind", type=int, default=10, help="planted copies per change and level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--background", action="store_true", help="also score verified minus a background score (SSCD normalisation)"
    )
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/planted_copies*.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    header = [
        "dims",
        "method",
        "rule",
        *CHANGES,
        "unseen flagged",
        "cross-fit FPR",
        "precision",
        "recall",
        "F1",
        "AUROC",
        "tau",
        "score s",
    ]
    sweep_header = ["dims", "method", "rule", "change", *(f"level {lv}" for lv in LEVELS)]
    headline, sweep, infos = [], [], []
    for dims in args.dims:
        rows, sweep_rows, info = run_dims(dims, args.epochs, args.per_kind, args.seed, args.background)
        headline += rows
        sweep += sweep_rows
        infos.append(info)
    if args.write:
        command = (
            f"PYTHONPATH=. .venv/bin/python benchmarks/planted_copies.py --write --dims "
            f"{' '.join(map(str, args.dims))} --epochs {args.epochs} --per-kind {args.per_kind}"
            + " --background"
            * args.background
        )
        notes = "\n" + "\n".join(f"- {i}" for i in infos) + "\n"
        print(f"wrote {write_result('planted_copies', markdown_table(header, headline) + notes, command)}")
        print(f"wrote {write_result('planted_sweep', markdown_table(sweep_header, sweep), command)}")


if __name__ == "__main__":
    main()
