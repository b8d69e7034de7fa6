"""What a reader must know before trusting a study's numbers, computed from the study itself.

Each caveat is a sentence a board can read, with the number that triggered it. Overview, Review and the
report show the same list, so nobody sees the copy fraction without its limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from core.detect.diagnostics import CalibrationDiagnostics
from core.detect.metrics import BeyondHeldout, MemorizationMetrics
from core.detect.record import Arch
from core.study.results import Pair, ScanSummary, copies, nearest_pairs
from core.study.review import ANATOMY_FLOOR, sample_quality

HIGH_FPR = 0.10  # above this share of real held-out scans called copies, say so
FEW_PATIENTS = 5  # fewer validation patients than this: the threshold rests on few people
PIXEL_DISAGREES = 0.5  # a flagged pair whose pixels correlate below this is not a visible copy
ALPHA = 0.05


class CaveatKey(StrEnum):
    """Each caveat's stable key (tests, the report's conclusion and styling refer to them)."""

    HIGH_FPR = "high_fpr"
    THRESHOLD_TRANSFER = "threshold_transfer"
    ONE_FILE_ONE_PATIENT = "one_file_one_patient"
    FEW_PATIENTS = "few_patients"
    P_VALUES = "p_values"
    PIXEL_DISAGREES = "pixel_disagrees"
    NOT_ANATOMY = "not_anatomy"
    NOT_NEW = "not_new"
    PAPER_METHOD = "paper_method"
    TAU_IN_BULK = "tau_in_bulk"
    SECOND_OPINION = "second_opinion"
    VAL_UNLIKE_SYNTHETIC = "val_unlike_synthetic"
    NO_DETECTOR = "no_detector"


@dataclass(frozen=True)
class Caveat:
    """One limit of the numbers: ``key`` (stable, for tests and styling) and the sentence."""

    key: CaveatKey
    text: str


def caveats(
    summary: ScanSummary,
    metrics: MemorizationMetrics,
    pairs: list[Pair],
    beyond: BeyondHeldout | None = None,
    diagnostics: CalibrationDiagnostics | None = None,
) -> list[Caveat]:
    """The caveats that apply to a study judged at ``metrics.threshold`` (see the module docstring); ``beyond``
    (:func:`core.study.review.nearer_than_heldout`) adds the one about samples between the held-out scores and tau,
    ``diagnostics`` (:func:`core.study.review.diagnostics_at`, at the same tau) those about where tau sits in the
    synthetic scores.

    One function: a flat list of independent checks of a few lines each, kept together in the order the pages show
    them.
    """
    found: list[Caveat] = []
    tau = metrics.threshold.value
    if metrics.expected_fpr_copy > HIGH_FPR:
        found.append(
            Caveat(
                CaveatKey.HIGH_FPR,
                f"{metrics.expected_fpr_copy:.0%} of real held-out scans would be called copies at this threshold: "
                "the copy fraction overstates copying by about that much.",
            )
        )
    unseen = summary.fpr_unseen
    if unseen is not None and unseen.value > HIGH_FPR:
        found.append(
            Caveat(
                CaveatKey.THRESHOLD_TRANSFER,
                f"On validation patients left out of the calibration, {unseen.value:.0%} of real scans were called "
                f"copies (95 % CI {unseen.low:.0%} to {unseen.high:.0%}): the threshold may not transfer to new "
                "patients.",
            )
        )
    by_default = [
        (name, summary.inputs[role].patients) for role, name in (("train", "training"), ("val", "validation"))
    ]
    doubtful = [(name, g) for name, g in by_default if g is not None and g.doubtful]
    if doubtful:
        sets = " and ".join(f"{name} ({g.files} files)" for name, g in doubtful)
        found.append(
            Caveat(
                CaveatKey.ONE_FILE_ONE_PATIENT,
                f"Every {sets} file was taken as its own patient: the folders name no patients. Slices or scans of "
                "one person then count as different people, so the new-patient threshold bound, the "
                "leave-one-patient-out check and the patient intervals are optimistic. Rescan with --patients "
                "pattern:REGEX (the patient's part of the file names) or a manifest with a patient_id column.",
            )
        )
    val = summary.inputs["val"]
    if val.n_patients < FEW_PATIENTS:
        found.append(
            Caveat(
                CaveatKey.FEW_PATIENTS,
                f"The threshold was calibrated on scans of {val.n_patients} validation patient(s) ({val.n} scans): "
                "patients differ more than scans do, so treat it as provisional until at least "
                f"{FEW_PATIENTS} are used.",
            )
        )
    smallest_p = 1.0 / (1 + metrics.threshold.null_size) if metrics.threshold.null_size else None
    if smallest_p is not None and smallest_p > ALPHA:
        found.append(
            Caveat(
                CaveatKey.P_VALUES,
                f"With {metrics.threshold.null_size} held-out scans the smallest possible p-value is {smallest_p:.2f}: "
                f"no single sample can be shown to be a copy at the {ALPHA:g} level.",
            )
        )
    flagged = copies(pairs, tau)
    if flagged:
        low = [p for p in flagged if p.pixel_corr < PIXEL_DISAGREES]
        if len(low) / len(flagged) > 0.2:
            found.append(
                Caveat(
                    CaveatKey.PIXEL_DISAGREES,
                    f"{len(low)} of {len(flagged)} flagged pairs have pixel correlation below {PIXEL_DISAGREES} "
                    f"(median {np.median([p.pixel_corr for p in flagged]):.2f}): the detector sees a resemblance the "
                    "pixels do not confirm; review them before calling them copies.",
                )
            )
    quality = sample_quality(pairs)
    if quality is not None and quality < ANATOMY_FLOOR:
        found.append(
            Caveat(
                CaveatKey.NOT_ANATOMY,
                f"The synthetic samples do not look like scans yet: their median pixel correlation with the nearest "
                f"training scan is {quality:.2f} (below {ANATOMY_FLOOR}; noise scores about 0). The model cannot make "
                "anatomy, so neither a low nor a high copy fraction says anything about copying: judge a better-"
                "trained checkpoint.",
            )
        )
    if beyond is not None and beyond.clearly_above_expected:
        nearest = nearest_pairs(pairs)
        between = sum(beyond.heldout_max < p.similarity <= tau for p in nearest)
        if nearest and between / len(nearest) > HIGH_FPR:
            found.append(
                Caveat(
                    CaveatKey.NOT_NEW,
                    f"{between} of {len(nearest)} samples are not called copies, yet they are nearer to a training "
                    f"scan than any real held-out scan is ({beyond.share.count} in all, {beyond.share.value:.0%}; "
                    f"samples as new as a new patient's scans would give about {beyond.expected:.0%}). Not being "
                    "called a copy does not make a sample new anatomy: review those pairs before sharing.",
                )
            )
    if diagnostics is not None:
        found += calibration_caveats(diagnostics)
    if summary.method == "paper":
        found.append(
            Caveat(
                CaveatKey.PAPER_METHOD,
                "Scanned with the paper's copy call (embedding correlation only), which on MemoScope's planted-copy "
                "benchmark misses most shifted and mixed copies; rescan with the verified call for those.",
            )
        )
    if not Arch(summary.detector.config.arch).trained:
        why = summary.detector.choice or (
            "No detector was trained for this scan: blurred, downsampled pixels retrieved the nearest training scans."
        )
        found.append(
            Caveat(
                CaveatKey.NO_DETECTOR,
                f"{why} A copy changed so much that its blurred pixels no longer resemble its "
                "source can be missed; the contrastive detector of Dar et al. is one option away (rescan without "
                "--detector none or with a larger --train-budget).",
            )
        )
    return found


SETTLE = (
    "What would settle it: validation patients from the same source, scanner and preprocessing as the training scans "
    "(and the patients the synthetic data will stand for), and more of them."
)


def calibration_caveats(d: CalibrationDiagnostics) -> list[Caveat]:
    """The diagnostics' findings in words, each with its numbers and what would settle it."""
    found: list[Caveat] = []
    if d.tau_in_bulk:
        found.append(
            Caveat(
                CaveatKey.TAU_IN_BULK,
                f"The threshold {d.tau:.3f} sits inside the synthetic samples' scores, not in a gap: {d.near_tau} of "
                f"{d.n_synthetic} ({d.near_tau / d.n_synthetic:.0%}) lie within {d.band:g} of it, so whether each is "
                "called a copy hangs on exactly where the threshold is. If those samples are new anatomy that simply "
                "resembles training, the copy fraction overstates copying; review them. " + SETTLE,
            )
        )
    if d.rules_disagree and d.gap_tau is not None:
        direction = (
            "would call fewer samples copies: the calibrated threshold may flag new anatomy"
            if d.gap_tau > d.tau
            else "would call more samples copies: a separate group of high scores lies below the calibrated threshold"
        )
        found.append(
            Caveat(
                CaveatKey.SECOND_OPINION,
                f"A second opinion read from the synthetic scores themselves (the widest gap above the validation "
                f"patients' median, {d.gap_low:.3f} to {d.gap_high:.3f}) puts the threshold at {d.gap_tau:.3f}, not "
                f"{d.tau:.3f}, and {direction} ({d.disagree} of {d.n_synthetic} samples called differently). The "
                "calibrated threshold stays the study's; review the samples between the two. " + SETTLE,
            )
        )
    if d.val_unlike_bulk and d.bulk_median is not None:
        found.append(
            Caveat(
                CaveatKey.VAL_UNLIKE_SYNTHETIC,
                f"The validation patients are less like the training scans than the synthetic samples read as new are: "
                f"{d.bulk_above_val95} of those {d.bulk} samples (median score {d.bulk_median:.3f}) score above 95 % "
                f"of the validation scans ({d.val_p95:.3f}; their median {d.val_median:.3f}). Either the generator "
                "reproduces training anatomy closely, or the validation patients come from another source than the "
                "patients the synthetic samples resemble; a threshold calibrated on them then sits too low for new "
                "patients like the training ones. " + SETTLE,
            )
        )
    return found
