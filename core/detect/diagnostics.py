"""Where the threshold sits in the synthetic samples' own scores, and a second opinion on it read from them.

The calibrated threshold (``tau``) speaks for new patients only as far as the validation patients resemble them. When
they do not (another site or contrast than the training scans, while the generator's users' patients share the
training scans' template space), tau lands inside the bulk of real new anatomy and flags it, and leave-one-patient-
out over those same validation patients cannot show it. The synthetic scores themselves can: after verification,
copies form a mode near 1 and new anatomy a bulk below it. This module reads that shape:

- ``near_tau``: the samples within :data:`BAND` of tau (their call hangs on exactly where tau sits);
- the widest gap in the synthetic scores above the validation patients' median score: the gap rule's threshold (its
  midpoint, a second opinion, reported beside the calibrated one and never replacing it) and how many samples the
  two rules call differently;
- how the samples below the gap (the bulk; below tau when there is no gap) score against the validation patients:
  the share above the validation scans' 95th percentile. A bulk mostly above it means the validation patients are
  less like the training scans than the synthetic samples are: either the generator reproduces training anatomy
  closely, or the validation patients come from elsewhere than the generator's subjects.

Pure numbers over two score arrays; :mod:`core.study.caveats` turns them into sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.common.config import Config

BAND = 0.05  # a sample within this of tau is called by where exactly tau sits
MIN_GAP = 0.05  # a gap narrower than this in the upper scores is no separation between copies and the bulk
MARGIN = 0.05  # the two thresholds disagree when they are further apart than this (and call samples differently)
MIN_SAMPLES = 20  # fewer synthetic samples than this: their distribution is not read (numbers kept, no caveat)


@dataclass(frozen=True)
class CalibrationDiagnostics(Config):
    """Where tau sits in the synthetic scores (see the module docstring); every number at ``tau``.

    Attributes:
        tau: the threshold judged.
        n_synthetic, n_val: samples and validation scans read.
        near_tau: synthetic samples within ``band`` of tau.
        gap_low, gap_high: the widest gap between consecutive synthetic scores above ``val_median`` (``None``:
            fewer than two scores there).
        gap_tau: the gap rule's threshold (the gap's midpoint), when the gap is at least :data:`MIN_GAP` wide and
            some sample lies above it; ``None``: the scores show no separate copy group.
        above_gap: samples above the gap.
        disagree: samples the calibrated and the gap rule call differently.
        val_median, val_p95: the validation scans' best scores to training: median and 95th percentile.
        bulk: synthetic samples below the gap (new anatomy as their own scores read it; below tau when there is no
            gap).
        bulk_above_val95: how many of them score above ``val_p95``.
        bulk_median: their median score (``None`` for an empty bulk).
    """

    tau: float
    n_synthetic: int
    n_val: int
    near_tau: int
    gap_low: float | None
    gap_high: float | None
    gap_tau: float | None
    above_gap: int
    disagree: int
    val_median: float
    val_p95: float
    bulk: int
    bulk_above_val95: int
    bulk_median: float | None
    band: float = BAND

    def describe(self) -> str:
        """The gap rule beside the calibrated threshold and where tau sits, in words (Calibrate and the report show
        the same sentence); it never replaces the calibrated threshold."""
        if self.gap_tau is None:
            gap = "the synthetic scores show no gap of at least 0.05 above the validation patients' median"
        else:
            gap = (
                f"the widest gap in the synthetic scores above the validation patients' median ({self.gap_low:.3f} "
                f"to {self.gap_high:.3f}) would put the threshold at {self.gap_tau:.3f}, calling {self.disagree} "
                "sample(s) differently"
            )
        below = "the gap" if self.gap_tau is not None else "tau"
        text = (
            f"Second opinion: {gap}; {self.near_tau} of {self.n_synthetic} samples lie within {self.band:g} of tau "
            f"{self.tau:.3f}, and {self.bulk_above_val95} of the {self.bulk} below {below} score above 95 % of the "
            f"validation scans ({self.val_p95:.3f}). The calibrated threshold decides."
        )
        if not self.readable:
            text += " Too few samples or validation scans to read a distribution from: no caveat."
        return text

    @property
    def readable(self) -> bool:
        """Enough samples and validation scans to read a distribution from (else: numbers only, no caveat)."""
        return self.n_synthetic >= MIN_SAMPLES and self.n_val >= MIN_SAMPLES

    @property
    def tau_in_bulk(self) -> bool:
        """More than a tenth of the samples sit within the band around tau."""
        return self.readable and self.near_tau > 0.1 * self.n_synthetic

    @property
    def rules_disagree(self) -> bool:
        """The gap rule puts the threshold more than :data:`MARGIN` away and calls at least 2 samples (and 5 %)
        differently."""
        return (
            self.readable
            and self.gap_tau is not None
            and abs(self.gap_tau - self.tau) > MARGIN
            and self.disagree >= max(2, 0.05 * self.n_synthetic)
        )

    @property
    def val_unlike_bulk(self) -> bool:
        """Most of the bulk (at least 10 samples) scores above 95 % of the validation scans."""
        return self.readable and self.bulk >= 10 and self.bulk_above_val95 > 0.5 * self.bulk


def calibration_diagnostics(
    synthetic: npt.ArrayLike, val: npt.ArrayLike, tau: float, band: float = BAND
) -> CalibrationDiagnostics:
    """The diagnostics of ``tau`` from each synthetic sample's and each validation scan's best score to training."""
    scores = np.sort(np.asarray(synthetic, dtype=np.float64))
    null = np.asarray(val, dtype=np.float64)
    val_median = float(np.median(null)) if len(null) else float("nan")
    val_p95 = float(np.percentile(null, 95)) if len(null) else float("nan")
    upper = scores[scores > val_median] if len(null) else scores
    gap_low = gap_high = gap_tau = None
    above = 0
    if len(upper) >= 2:
        widths = np.diff(upper)
        i = int(np.argmax(widths))
        gap_low, gap_high = float(upper[i]), float(upper[i + 1])
        if widths[i] >= MIN_GAP:
            gap_tau = (gap_low + gap_high) / 2.0
            above = int(len(upper) - i - 1)
    second = tau if gap_tau is None else gap_tau
    disagree = int(np.sum((scores > tau) != (scores > second)))
    bulk = scores[scores <= second]  # new anatomy as the scores themselves read it: below the gap, if there is one
    return CalibrationDiagnostics(
        tau=float(tau),
        n_synthetic=len(scores),
        n_val=len(null),
        near_tau=int(np.sum(np.abs(scores - tau) <= band)),
        gap_low=gap_low,
        gap_high=gap_high,
        gap_tau=gap_tau,
        above_gap=above,
        disagree=disagree,
        val_median=val_median,
        val_p95=val_p95,
        bulk=len(bulk),
        bulk_above_val95=int(np.sum(bulk > val_p95)),
        bulk_median=float(np.median(bulk)) if len(bulk) else None,
        band=band,
    )
