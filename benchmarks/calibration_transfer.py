"""When the validation patients cannot speak for new ones: the calibrated threshold, the gap rule's second opinion,
and the diagnostics that say so.

Real brain MR slices at 64 px. Training: two subjects. New patients *in a training subject's template space* (as
when every scan is registered to MNI or SRI24): a training slice's coarse anatomy (a Gaussian of ``sigma`` px) with
another real subject's finer structure; ``sigma`` 2 px leaves them closer to training than ``sigma`` 3 px. Validation
patients either from *another source* (diffusion MR of two further subjects: other scanner, contrast, resolution) or
from the *same source* as the new patients (further template-space subjects). Copies of training slices are planted
at level 2 with every change, zoom included, among the new patients' slices. Retrieval uses the committed demo
detector (verification decides); each scenario is judged by the scan's default rule (heldout-patient 95) and by the
gap rule (:mod:`core.detect.diagnostics`). Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/calibration_transfer.py [--per-kind 5] [--write]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from core.detect.detector import embed, load_detector
from core.detect.diagnostics import CalibrationDiagnostics, calibration_diagnostics
from core.detect.metrics import ThresholdRule, calibrate, is_copy, wilson_interval
from core.detect.planted import CHANGES, PlantedSet, plant_copies
from core.detect.verify import MatchMethod, VerifyConfig, best_match
from core.io.sample_data import REAL_VOLUMES, axial_slices
from tools.readme_tables import markdown_table, write_result

REPO = Path(__file__).resolve().parents[1]
DETECTOR = REPO / "checkpoints" / "demo-2d-detector"
TRAIN = (("mni152", 3), ("nibabel-example4d", 2))
OTHER_SOURCE = ("dipy-aniso-vox", "dipy-piesno")
DONORS = ("nibabel-anatomical", "dipy-s0-10slices")
RULE, PERCENTILE = ThresholdRule.HELDOUT_PATIENT, 95.0


def _slices(subject: str, step: int = 1) -> np.ndarray:
    return axial_slices(next(v for v in REAL_VOLUMES if v.subject == subject), 64, step=step)


def training() -> tuple[np.ndarray, list[str]]:
    parts = [(_slices(s, step), s) for s, step in TRAIN]
    return np.concatenate([p for p, _ in parts]), [s for p, s in parts for _ in range(len(p))]


def other_source() -> tuple[np.ndarray, list[str]]:
    parts = [(_slices(s), s) for s in OTHER_SOURCE]
    return np.concatenate([p for p, _ in parts]), [s for p, s in parts for _ in range(len(p))]


def template_space(
    train: np.ndarray, n: int, sigma: float, seed: int, patients: int = 5
) -> tuple[np.ndarray, list[str]]:
    """``n`` slices of ``patients`` new subjects in a training subject's template space: a training slice's anatomy
    coarser than ``sigma`` px, another real subject's structure finer than that."""
    donors = np.concatenate([_slices(s) for s in DONORS])
    rng = np.random.default_rng(seed)
    out = []
    for t in rng.choice(len(train), size=n, replace=False):
        donor = donors[rng.integers(len(donors)), 0]
        x = ndimage.gaussian_filter(train[t, 0], sigma) + donor - ndimage.gaussian_filter(donor, sigma)
        out.append(np.clip(x, -1.0, 1.0)[None])
    return np.stack(out).astype(np.float32), [f"new-{seed}-{i % patients}" for i in range(n)]


def judge(
    best: np.ndarray, index: np.ndarray, planted: PlantedSet, tau: float
) -> tuple[float, float, float, int, int, str]:
    """Share of new-patient slices flagged, copies found (right source) overall and zoomed, their counts, and the
    copies missed by change."""
    flagged = is_copy(best, tau)
    found = flagged & (index == planted.source_index)
    copy, kinds = planted.is_copy, np.array(planted.kind)
    missed = [f"{k} {int((~found[kinds == k]).sum())}" for k in CHANGES if (~found[kinds == k]).any()]
    return (
        float(flagged[~copy].mean()),
        float(found[copy].mean()),
        float(found[kinds == "zoom"].mean()),
        int(flagged[~copy].sum()),
        int((~copy).sum()),
        ", ".join(missed) or "none",
    )


def fired(d: CalibrationDiagnostics) -> str:
    names = [n for n, on in (("tau_in_bulk", d.tau_in_bulk), ("second_opinion", d.rules_disagree)) if on]
    names += ["val_unlike_synthetic"] * d.val_unlike_bulk
    return ", ".join(names) or "none"


def run(per_kind: int, sigmas: tuple[float, ...], seed: int) -> tuple[list[list[str]], str]:
    detector = load_detector(DETECTOR)
    config = VerifyConfig()
    train, _ = training()
    v_train = embed(detector.model, train)

    def nearest(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = best_match(MatchMethod.VERIFIED, embed(detector.model, images), v_train, images, train, config)
        return found.best, found.index[:, 0]

    rows = []
    start = time.perf_counter()
    far, far_patients = other_source()
    for sigma in sigmas:
        new, _ = template_space(train, 40, sigma, seed + 1)
        planted = plant_copies(train, new, per_kind, seed=seed + 2, level=2)
        best, index = nearest(planted.images)
        near, near_patients = template_space(train, 40, sigma, seed + 3)
        for source, (val, patients) in (
            ("another source", (far, far_patients)),
            ("same source", (near, near_patients)),
        ):
            null, _ = nearest(val)
            tau = calibrate(RULE, null, null, PERCENTILE, val_patients=patients).value
            d = calibration_diagnostics(best, null, tau)
            for rule, t in ((f"{RULE} {PERCENTILE:g}", tau), ("gap rule", d.gap_tau)):
                if t is None:
                    rows.append([f"{sigma:g} px", source, rule, "no gap", *["-"] * 5, ""])
                    continue
                unseen, recall, zoom, count, total, missed = judge(best, index, planted, t)
                low, high = wilson_interval(count, total)
                rows.append(
                    [
                        f"{sigma:g} px",
                        source,
                        rule,
                        f"{t:.3f}",
                        f"{count}/{total} ({unseen:.0%} [{low:.0%}, {high:.0%}])",
                        f"{recall:.2f}",
                        f"{zoom:.2f}",
                        missed,
                        f"{d.near_tau}/{d.n_synthetic}",
                        fired(d) if rule != "gap rule" else "",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    info = (
        f"{len(train)} training slices of {len(TRAIN)} subjects; {len(far)} validation slices of {len(OTHER_SOURCE)} "
        f"other-source subjects or 40 of 5 same-source subjects; {int(planted.is_copy.sum())} planted copies (level "
        f"2, {per_kind} per change of {len(CHANGES)}) among 40 new-patient slices; {time.perf_counter() - start:.0f} s"
    )
    return rows, info


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-kind", type=int, default=5, help="planted copies per change")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[2.0, 3.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/calibration_transfer.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    header = [
        "new patients' template anatomy above",
        "validation patients",
        "rule",
        "tau",
        "new-patient slices flagged",
        "copies found",
        "zoomed copies found",
        "copies missed",
        "samples within 0.05 of tau",
        "caveats (calibrated rule)",
    ]
    rows, info = run(args.per_kind, tuple(args.sigmas), args.seed)
    if args.write:
        command = (
            f"PYTHONPATH=. .venv/bin/python benchmarks/calibration_transfer.py --write --per-kind {args.per_kind} "
            f"--sigmas {' '.join(f'{s:g}' for s in args.sigmas)}"
        )
        table = markdown_table(header, rows) + f"\n- {info}\n"
        print(f"wrote {write_result('calibration_transfer', table, command)}")


if __name__ == "__main__":
    main()
