"""The planted-copy benchmark's 2D data exported as users hold it, scanned through the CLI: does the copy call
depend on how the files say who is who?

The training, validation and synthetic (planted copies at level 1 among unseen-subject slices) sets of
``planted_copies.py`` are written as 16-bit PNG files named ``<subject>_<n>.png``, then scanned three ways with
one detector (trained once, passed with ``--detector``): a manifest naming each file's patient; the same files in
flat folders with ``--patients pattern:^(?P<patient>[^_]+)_``; and the flat folders with the default
``--patients auto`` (no patient subfolders: every file its own patient). Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/patient_layouts.py [--epochs 30] [--per-kind 10] [--write]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.planted_copies import TRAIN, UNSEEN, VAL, _items
from core.detect.detector import TrainDetectorConfig, train_from_sources
from core.detect.metrics import wilson_interval
from core.detect.planted import CHANGES, plant_copies
from core.generative.sample import to_uint16
from core.io.preprocessing import PreprocessSpec
from core.study.results import read_summary
from tools.readme_tables import markdown_table, write_result

PATTERN = r"pattern:^(?P<patient>[^_]+)_"


def _export(root: Path, per_kind: int, seed: int) -> dict[str, str]:
    """Write the benchmark's sets; returns each planted copy's file -> its source's training file."""
    sources: dict[str, str] = {}
    rows = []
    for role, subjects in (("train", TRAIN), ("val", VAL)):
        images, patients = _items(subjects, 2)
        counts: dict[str, int] = {}
        names = []
        for image, patient in zip(images, patients, strict=True):
            counts[patient] = counts.get(patient, 0) + 1
            name = f"{patient}_{counts[patient]:03d}.png"
            (root / role).mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_uint16(image[0])).save(root / role / name)
            rows.append((f"{role}/{name}", patient, role))
            names.append(name)
        if role == "train":
            train_images, train_names = images, names
    unseen, _ = _items(UNSEEN, 2)
    planted = plant_copies(train_images, unseen, per_kind, seed=seed + 1, level=1)
    (root / "synthetic").mkdir()
    for j, image in enumerate(planted.images):
        name = f"{planted.kind[j]}_{j:03d}.png"
        Image.fromarray(to_uint16(image[0])).save(root / "synthetic" / name)
        if planted.source_index[j] >= 0:
            sources[name] = train_names[int(planted.source_index[j])]
        else:
            sources[name] = ""
    with open(root / "manifest.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "patient_id", "split"), *rows])
    return sources


def _scan(root: Path, name: str, train: str, val: str, patients: str, detector: Path) -> tuple[Path, str, float]:
    out = root / name
    command = [sys.executable, "-m", "core", "scan", "--train", str(root / train), "--val", str(root / val)]
    command += ["--synthetic", str(root / "synthetic"), "--out", str(out), "--detector", str(detector)]
    command += ["--patients", patients, "--device", "cpu", "--cache-dir", str(root / "cache")]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name}: scan failed\n{done.stderr}")
    return out, done.stderr, time.perf_counter() - start


def _row(layout: str, study: Path, stderr: str, seconds: float, sources: dict[str, str]) -> list[str]:
    with open(study / "pairs.csv", newline="") as handle:
        nearest = {r["synthetic_id"]: r for r in csv.DictReader(handle) if r["rank"] == "1"}
    flagged = {s for s, r in nearest.items() if r["is_copy"] == "1"}
    copies = {s for s, src in sources.items() if src}
    found = {s for s in copies & flagged if Path(nearest[s]["train_id"]).name == sources[s]}
    unseen_flagged = len(flagged - copies)
    n_unseen = len(sources) - len(copies)
    precision = len(found) / max(len(flagged), 1)
    recall = len(found) / len(copies)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    summary = read_summary(study)
    low, high = wilson_interval(unseen_flagged, n_unseen)
    unseen = summary.fpr_unseen
    patients = [summary.inputs[r].patients for r in ("train", "val")]
    return [
        layout,
        " / ".join(f"{g.patients} in {g.files}" if g else "-" for g in patients),
        "yes" if "warning: train set" in stderr or "warning: val set" in stderr else "no",
        *(
            f"{len([s for s in found if s.startswith(k + '_')])}/{len([s for s in copies if s.startswith(k + '_')])}"
            for k in CHANGES
        ),
        f"{unseen_flagged}/{n_unseen} ({unseen_flagged / n_unseen:.2f} [{low:.2f}, {high:.2f}])",
        "-" if unseen is None else f"{unseen.count}/{unseen.total}: {unseen.method}",
        f"{f1:.3f}",
        f"{summary.tau:.3f}",
        f"{seconds:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=30, help="detector training epochs")
    parser.add_argument("--per-kind", type=int, default=10, help="planted copies per change")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/patient_layouts.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="memoscope-layouts-") as tmp:
        root = Path(tmp)
        sources = _export(root, args.per_kind, args.seed)
        detector = root / "detector"
        train_from_sources(
            TrainDetectorConfig(
                train=str(root / "manifest.csv"),
                val=str(root / "manifest.csv"),
                out=str(detector),
                spec=PreprocessSpec((64, 64)),
                seed=args.seed,
                overrides={"epochs": args.epochs},
            )
        )
        layouts = [
            ("manifest (auto)", "manifest.csv", "manifest.csv", "auto"),
            (f"flat folders, --patients {PATTERN}", "train", "val", PATTERN),
            ("flat folders, --patients auto", "train", "val", "auto"),
        ]
        rows = []
        for i, (label, train, val, patients) in enumerate(layouts):
            study, stderr, seconds = _scan(root, f"study-{i}", train, val, patients, detector)
            rows.append(_row(label, study, stderr, seconds, sources))
            print(" | ".join(rows[-1]), flush=True)
    header = [
        "layout",
        "patients (train / val)",
        "warned",
        *CHANGES,
        "unseen flagged",
        "fpr_unseen in summary.json",
        "F1",
        "tau",
        "scan s",
    ]
    table = markdown_table(header, rows)
    print(table)
    if args.write:
        command = (
            f"PYTHONPATH=. .venv/bin/python benchmarks/patient_layouts.py --write --epochs {args.epochs} "
            f"--per-kind {args.per_kind}"
        )
        print(f"wrote {write_result('patient_layouts', table, command)}")


if __name__ == "__main__":
    main()
