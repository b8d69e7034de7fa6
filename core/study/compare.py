"""Studies side by side: which checkpoint, how it was trained, and what each scan found, with intervals.

Each row is read from a study's own files (``summary.json``, the saved study threshold, ``selftest.json``) and
the checkpoint's ``ldm.json`` provenance; nothing is recomputed except the fractions at the study threshold
when one was saved (the same numbers the study's Overview shows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.common.errors import MemoScopeError
from core.detect.metrics import BeyondHeldout, Fraction
from core.generative.ldm import CONFIG_NAME, read_config
from core.study import verdicts
from core.study.privacy import PrivacyReport, current_privacy
from core.study.results import ScanResults
from core.study.review import ANATOMY_FLOOR, metrics_at, nearer_than_heldout, sample_quality
from core.study.selftest import read_selftest


@dataclass(frozen=True)
class StudyRow:
    """One study in a comparison."""

    study: str
    dims: int
    checkpoint: str | None
    unet_epochs: int | None
    augmentation: bool | None
    method: str
    threshold: str
    tau: float
    memorized: Fraction
    copies: Fraction
    expected_fpr_copy: float
    unseen_fpr: Fraction | None
    resemble_patient: Fraction | None
    selftest_f1: float | None
    sample_quality: float | None = None  # median pixel r of each sample with its nearest training scan
    beyond_heldout: BeyondHeldout | None = None  # samples nearer to training than every held-out scan
    train_patients: int | None = None  # what the memorized interval rests on
    privacy: PrivacyReport | None = None  # the privacy tests of this scan, when run
    privacy_error: str = ""  # why privacy.json could not be read (the copy columns still stand)

    @property
    def too_poor_to_judge(self) -> bool:
        """The samples are not yet anatomy: their memorization numbers say nothing about copying."""
        return self.sample_quality is not None and self.sample_quality < ANATOMY_FLOOR

    @property
    def quality_label(self) -> str:
        if self.sample_quality is None:
            return ""
        poor = " (too poor to judge)" if self.too_poor_to_judge else ""
        return f"{self.sample_quality:.2f}{poor}"

    def table_row(self) -> dict[str, Any]:
        """The row as the Compare page's table shows it (fractions as ``value [low, high]``)."""

        def pct(f: Fraction | None) -> str:
            return "" if f is None else f"{f.value:.1%} [{f.low:.1%}, {f.high:.1%}]"

        return {
            "study": self.study,
            "threshold": self.threshold,
            "dims": f"{self.dims}D",
            "checkpoint": self.checkpoint or "",
            "UNet epochs": self.unet_epochs,
            "augmentation": {True: "yes", False: "no", None: ""}[self.augmentation],
            "sample quality": self.quality_label,
            "memorized training": pct(self.memorized),
            "synthetic copies": pct(self.copies),
            "nearer than any held-out scan": ""
            if self.beyond_heldout is None
            else f"{pct(self.beyond_heldout.share)} (new: ~{self.beyond_heldout.expected:.0%})",
            "expected FPR": f"{self.expected_fpr_copy:.1%}",
            "unseen-patient FPR": pct(self.unseen_fpr),
            "resemble a patient": pct(self.resemble_patient),
            "self-test F1": "not run" if self.selftest_f1 is None else f"{self.selftest_f1:.3f}",
            "copy call": self.method,
        }

    def privacy_columns(self) -> dict[str, str]:
        """The three privacy answers as table cells ("not run" until ``python -m core privacy`` has run on this
        scan)."""
        p, columns = self.privacy, ("membership AUROC", "C_T", "nearest a training scan")
        if self.privacy_error:
            return dict.fromkeys(columns, f"unreadable: rerun `python -m core privacy --study {self.study}`")
        if p is None:
            return dict.fromkeys(columns, "not run")
        m, near = p.membership, p.nearest_record
        return {
            "membership AUROC": "no checkpoint" if m is None else f"{m.interval()}; p = {m.p_value:.2g}",
            "C_T": "not tested" if p.ct is None else f"{p.ct.value:.1f}",
            "nearest a training scan": f"{near.value:.0%} [{near.low:.0%}, {near.high:.0%}]",
        }


def compare(a: Fraction, b: Fraction) -> str:
    """How fraction ``b`` stands against ``a``, in words that respect their 95 % intervals."""
    if b.low > a.high:
        return "clearly higher than (intervals apart)"
    if b.high < a.low:
        return "clearly lower than (intervals apart)"
    if b.value > a.value:
        return "higher, within overlapping intervals, than"
    if b.value < a.value:
        return "lower, within overlapping intervals, than"
    return "the same as"


def augmentation_sentence(rows: list[StudyRow]) -> str | None:
    """Does augmentation lower memorization here? One sentence from the rows with and without augmentation at the
    same training length and dimensions (studies too poor to judge left out), each fraction with its interval and
    what it rests on; ``None`` when no such pair is chosen."""
    pairs, poor = [], []
    for aug in rows:
        matches = [
            r
            for r in rows
            if aug.augmentation is True
            and r.augmentation is False
            and r.dims == aug.dims
            and r.unet_epochs == aug.unet_epochs
            and r.unet_epochs is not None
        ]
        if matches and (aug.too_poor_to_judge or matches[0].too_poor_to_judge):
            poor.append(f"{aug.unet_epochs} epochs")
        elif matches:
            pairs.append((matches[0], aug))
    if not pairs:
        return None
    pairs.sort(key=lambda p: (p[0].dims, p[0].unet_epochs or 0))

    def line(which: str) -> tuple[str, int]:
        items, clear = [], 0
        for plain, aug in pairs:
            a, b = getattr(aug, which), getattr(plain, which)
            lower = compare(b, a).startswith("clearly lower")
            clear += lower
            items.append(
                f"{aug.unet_epochs} epochs{f' ({aug.dims}D)' if len({p.dims for p, _ in pairs}) > 1 else ''} "
                f"{_frac(a)} vs {_frac(b)} ({'clearly lower' if lower else 'intervals overlap'})"
            )
        return "; ".join(items), clear

    copies, clear_c = line("copies")
    memorized, clear_m = line("memorized")
    patients = sorted({r.train_patients for pair in pairs for r in pair if r.train_patients})
    on = f" ({', '.join(map(str, patients))} training patients)" if patients else ""
    n = len(pairs)
    answer = (
        f"augmentation clearly lowered the copy fraction at {clear_c} of {n} training lengths and the memorized "
        f"fraction at {clear_m} of {n}"
        if clear_c or clear_m
        else f"augmentation's effect cannot be told from chance at any of the {n} training lengths"
    )
    left_out = f" ({', '.join(poor)}: too poor to judge, left out)" if poor else ""
    return (
        f"Copy fraction with vs without augmentation: {copies}. Memorized training scans{on}: {memorized}. "
        f"So {answer}{left_out}."
    )


def threshold_note(rows: list[StudyRow]) -> str | None:
    """When the studies are judged at different thresholds (a saved one beside the scans' own), which at which:
    their fractions are then not directly comparable."""
    if len({round(r.tau, 3) for r in rows}) < 2:
        return None
    return (
        "These studies are judged at different thresholds, so their fractions are not directly comparable: "
        + "; ".join(f"{r.study} at {r.tau:.3f} ({r.threshold})" for r in rows)
        + "."
    )


def _frac(f: Fraction) -> str:
    return f"{f.value:.1%} [{f.low:.1%}, {f.high:.1%}]"


def _training(checkpoint: str | None) -> tuple[int | None, bool | None]:
    """UNet epochs and augmentation from the checkpoint's provenance, when the checkpoint is at hand."""
    if not checkpoint or not (Path(checkpoint) / CONFIG_NAME).is_file():
        return None, None
    try:
        training = read_config(checkpoint).training
    except MemoScopeError:  # the training columns are optional: a checkpoint this version cannot read leaves them empty
        return None, None
    return training.unet_epochs, training.augment


def study_row(folder: str | Path) -> StudyRow:
    """A scanned study as a comparison row, at its study threshold (saved, or the scan's own)."""
    folder = Path(folder)
    scan = ScanResults.open(folder)
    summary = scan.summary
    chosen = verdicts.study_threshold(folder, scan)
    at = metrics_at(scan, chosen.value, chosen.rule, chosen.percentile)
    checkpoint = summary.checkpoint if isinstance(summary.checkpoint, str) else None
    epochs, augment = _training(checkpoint)
    tested = read_selftest(folder, summary.scan_id)
    resemblance = summary.patient_resemblance
    pairs = scan.pairs()
    return StudyRow(
        folder.name,
        summary.preprocessing.spatial_dims,
        Path(checkpoint).name if checkpoint else None,
        epochs,
        augment,
        str(summary.method),
        chosen.label,
        chosen.value,
        at.memorized,
        at.copies,
        at.expected_fpr_copy,
        summary.fpr_unseen,
        resemblance.fraction if resemblance is not None else None,
        tested.f1 if tested is not None else None,
        sample_quality(pairs),
        nearer_than_heldout(scan, pairs),
        summary.inputs["train"].n_patients,
        *_privacy(folder, summary.scan_id),
    )


def _privacy(folder: Path, scan_id: str) -> tuple[PrivacyReport | None, str]:
    """The study's privacy results of this scan, or why its privacy.json could not be read: an optional record
    that is damaged must not hide the study's copy numbers from the comparison."""
    try:
        return current_privacy(folder, scan_id), ""
    except MemoScopeError as exc:
        return None, str(exc)


def compare_studies(folders: list[str | Path]) -> list[StudyRow]:
    """The scanned studies among ``folders`` as rows, ordered by dimensionality, augmentation and training length;
    a study that is not scanned yet is refused by name."""
    rows = []
    for folder in folders:
        try:
            rows.append(study_row(folder))
        except MemoScopeError as exc:
            raise MemoScopeError(f"cannot compare {Path(folder).name}: {exc}") from exc
    return sorted(rows, key=lambda r: (r.dims, str(r.augmentation), r.unet_epochs or 0, r.study))


def fractions_by_epochs(rows: list[StudyRow]) -> go.Figure:
    """Copies and memorized training against UNet epochs, one line per augmentation setting, with 95 % intervals
    (studies without known training length, or too poor to judge, are left out of the plot, not the table)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("synthetic copies", "memorized training"), shared_yaxes=True)
    groups: dict[str, list[StudyRow]] = {}
    for row in rows:
        if row.unet_epochs is not None and not row.too_poor_to_judge:  # a stage that cannot make anatomy is no result
            name = (
                f"{row.dims}D, "
                + {True: "augmented", False: "not augmented", None: "augmentation unknown"}[row.augmentation]
            )
            groups.setdefault(name, []).append(row)
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    for i, (name, members) in enumerate(sorted(groups.items())):
        members = sorted(members, key=lambda r: r.unet_epochs or 0)
        x = [r.unet_epochs for r in members]
        for col, pick in ((1, lambda r: r.copies), (2, lambda r: r.memorized)):
            values = [pick(r) for r in members]
            fig.add_scatter(
                x=x,
                y=[v.value for v in values],
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[v.high - v.value for v in values],
                    arrayminus=[v.value - v.low for v in values],
                ),
                mode="lines+markers",
                name=name,
                legendgroup=name,
                showlegend=col == 1,
                line=dict(color=palette[i % len(palette)]),
                hovertext=[r.study for r in members],
                row=1,
                col=col,
            )
    epochs = sorted({r.unet_epochs for r in rows if r.unet_epochs is not None})
    fig.update_xaxes(type="log", title_text="UNet training epochs", tickvals=epochs, ticktext=[str(e) for e in epochs])
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_layout(height=380, margin=dict(t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return fig
