"""Reading a scanned study back for review: calibration arrays, live metrics, the work-list, images.

Pure functions over the files ``core scan`` wrote (no Streamlit), so that the app's slider and
viewer do no search or model work: the threshold only moves over presorted arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from core.common.errors import MemoScopeError
from core.common.tables import read_csv
from core.detect.diagnostics import CalibrationDiagnostics, calibration_diagnostics
from core.detect.metrics import (
    BeyondHeldout,
    Fraction,
    MemorizationMetrics,
    Threshold,
    ThresholdRule,
    any_per_group,
    beyond_heldout,
    count_above,
    fraction_above,
    is_copy,
    memorization_metrics,
    wilson_interval,
)
from core.detect.verify import Verifier, VerifyConfig
from core.generative.sample import MANIFEST, RECORD, read_generation
from core.io.load import ImageSet, SliceAxis, load_set, source_of
from core.io.preprocessing import PreprocessSpec
from core.study.results import Calibration, Pair, PatientRow, ScanResults, ScanSummary, copies, nearest_pairs

if TYPE_CHECKING:  # plotly loads with the first figure (a GPU machine without it still reads studies)
    import plotly.graph_objects as go


@dataclass(frozen=True)
class LiveMetrics:
    """Counts and fractions at one threshold (the slider's read-out); intervals are Wilson 95 %."""

    tau: float
    memorized: int
    n_train: int
    copies: int
    n_synthetic: int
    fpr_copy: float
    fpr_memorized: float

    @property
    def memorized_fraction(self) -> float:
        return self.memorized / self.n_train if self.n_train else float("nan")

    @property
    def copy_fraction(self) -> float:
        return self.copies / self.n_synthetic if self.n_synthetic else float("nan")

    @property
    def memorized_interval(self) -> tuple[float, float]:
        return wilson_interval(self.memorized, self.n_train)

    @property
    def copy_interval(self) -> tuple[float, float]:
        return wilson_interval(self.copies, self.n_synthetic)


def metrics_at(scan: ScanResults, value: float, rule: str, percentile: float | None) -> MemorizationMetrics:
    """Both fractions with intervals, and the expected FPRs, at a chosen threshold.

    At the scan's own threshold these are the scan's numbers; at another (a saved study threshold) they are
    recomputed from the study's best-correlation arrays with the same interval method and seed.
    """
    summary = scan.summary
    if value == summary.tau:
        return summary.metrics
    cal = scan.calibration()
    kind = ThresholdRule(rule)
    null = cal.val_to_train if kind.uses_heldout_null else cal.train_to_val
    null_size = 0 if kind.spec.null is None else len(null)
    threshold = Threshold(kind, percentile, float(value), null_size)
    return memorization_metrics(
        threshold,
        scan.best("train_to_synthetic"),
        scan.best("synthetic_to_train"),
        cal.train_to_val,
        cal.val_to_train,
        seed=summary.seed,
        train_groups=[r.patient_id for r in scan.train_rows()],
        synthetic_groups=[source_of(p.synthetic_id) for p in scan.nearest()],
    )


def interval_note(scan: ScanResults, metrics: MemorizationMetrics) -> str:
    """How the two intervals were made, in plain words (the Overview and the report say the same)."""
    rows = scan.train_rows()
    if len({r.patient_id for r in rows}) < len(rows):
        memorized = (
            "Several training scans of one patient (neighbouring slices, say) are not independent draws, so the "
            "memorized interval resamples training patients"
        )
    elif _guessed_patients(scan.summary):
        memorized = (
            "No patient was named (each training file was taken as its own patient), so the memorized interval "
            "counts files as if they were people: too narrow if files share a patient (see the caveat)"
        )
    else:
        memorized = "Each training patient has one scan, so the memorized interval counts patients"
    return (
        f"{memorized} ({metrics.memorized.method}); the copy interval resamples what was drawn independently "
        f"({metrics.copies.method}), with the threshold held fixed."
    )


@dataclass(frozen=True)
class ByPatient:
    """How many training *patients* have a memorized scan (issue 14: effective sample size).

    The scan's own intervals already resample patients (and generated volumes, for slices); this adds the count a
    board asks first: whose anatomy came back, not how many slices.

    Attributes:
        patients_memorized: training patients with at least one memorized scan (Wilson over patients).
    """

    patients_memorized: Fraction
    guessed: bool = False  # the "patients" are files: the rule only guessed (each file its own patient)

    def describe(self) -> str:
        p = self.patients_memorized
        text = (
            f"By patient: {p.count} of {p.total} training patients have at least one memorized scan "
            f"(95 % CI {p.low:.0%} to {p.high:.0%}, {p.method})."
        )
        if self.guessed:
            text += (
                " These patients are files: no patient was named, so each file counts as a person and the interval "
                "is too narrow if files share a patient; name the patients to count people."
            )
        return text


def nearer_than_heldout(scan: ScanResults, pairs: list[Pair] | None = None) -> BeyondHeldout:
    """:class:`~core.detect.metrics.BeyondHeldout` of a scanned study: its samples' best scores against training
    beside the validation scans' (``neighbors.npz``), with the scan's seed; generated volumes resampled when the
    samples are their slices. ``pairs``: the study's pairs when already read."""
    volumes = [source_of(p.synthetic_id) for p in nearest_pairs(scan.pairs() if pairs is None else pairs)]
    return beyond_heldout(
        scan.best("synthetic_to_train"), scan.calibration().val_to_train, volumes, seed=scan.summary.seed + 2
    )


def diagnostics_at(scan: ScanResults, tau: float) -> CalibrationDiagnostics:
    """Where ``tau`` sits in a scanned study's synthetic scores (:mod:`core.detect.diagnostics`): the scan's own
    record at its tau, else computed from ``neighbors.npz`` (a saved study threshold, or a scan before it was
    recorded)."""
    recorded = scan.summary.diagnostics
    if recorded is not None and recorded.tau == tau:
        return recorded
    calibration = scan.calibration()
    return calibration_diagnostics(calibration.synthetic_to_train, calibration.val_to_train, tau)


ANATOMY_FLOOR = 0.3  # median pixel r below this: the samples resemble no real scan (pure noise scores about 0)


def sample_quality(pairs: list[Pair]) -> float | None:
    """Whether a generator makes anatomy yet: the median pixel correlation (after alignment, for verified scans)
    of each synthetic sample with its nearest training scan. Below :data:`ANATOMY_FLOOR` the samples are not yet
    scans, and a low copy fraction says the model cannot make anatomy, not that it does not copy."""
    values = [p.pixel_corr for p in nearest_pairs(pairs) if p.pixel_corr is not None and np.isfinite(p.pixel_corr)]
    return float(np.median(values)) if values else None


def by_patient(scan: ScanResults, tau: float) -> ByPatient:
    """:class:`ByPatient` at ``tau`` from the study's ``train_nn.csv``: any scanned study."""
    rows = scan.train_rows()
    found = any_per_group(is_copy([r.similarity for r in rows], tau), [r.patient_id for r in rows])
    return ByPatient(found, _guessed_patients(scan.summary))


def _guessed_patients(summary: ScanSummary) -> bool:
    """Whether the training set's patients were only guessed (each file its own patient, by default)."""
    grouping = summary.inputs["train"].patients
    return grouping is not None and grouping.doubtful


def sample_conditioning(summary: ScanSummary) -> dict[str, dict[str, float]]:
    """Each synthetic sample's conditioning values (conditional LDMs), by synthetic ID; empty when the samples were
    generated without any. Read from the ``manifest.csv`` and ``generation.json`` that ``generate`` wrote beside
    them (only the columns the generation record names as conditioning)."""
    source = Path(summary.source("synthetic"))
    folder = source if source.is_dir() else source.parent
    manifest = folder / MANIFEST
    if not manifest.is_file() or not (folder / RECORD).is_file():
        return {}
    try:
        names = read_generation(folder).conditioning_names
    except MemoScopeError:
        return {}
    if not names:
        return {}
    found: dict[str, dict[str, float]] = {}
    for row in read_csv(manifest):
        try:
            found[row["path"]] = {name: float(row[name]) for name in names}
        except (KeyError, TypeError, ValueError):
            continue
    return found


@dataclass(frozen=True)
class Stratum:
    """Copies among the samples generated with one band of a conditioning value."""

    label: str
    copies: Fraction


def copies_by_condition(
    scan: ScanResults,
    tau: float,
    name: str,
    bands: int = 4,
    conditions: dict[str, dict[str, float]] | None = None,
) -> list[Stratum]:
    """The copy fraction per band of conditioning value ``name`` (quantile bands; each distinct value its own band
    when there are at most ``bands`` of them), Wilson intervals: are copies concentrated in, say, one age band?"""
    conditions = sample_conditioning(scan.summary) if conditions is None else conditions
    nearest = [p for p in scan.nearest() if source_of(p.synthetic_id) in conditions]
    if not nearest:
        return []
    values = np.array([conditions[source_of(p.synthetic_id)][name] for p in nearest])
    flags = is_copy([p.similarity for p in nearest], tau)
    distinct = np.unique(values)
    if len(distinct) <= bands:
        groups = [(f"{name} = {v:g}", values == v) for v in distinct]
    else:
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bands + 1)))
        groups = []
        for i, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            last = i == len(edges) - 2
            inside = (values >= low) & ((values <= high) if last else (values < high))
            groups.append((f"{name} {low:.3g} to {high:.3g}", inside))
    strata = []
    for label, inside in groups:
        count, total = int(flags[inside].sum()), int(inside.sum())
        low, high = wilson_interval(count, total)
        strata.append(Stratum(label, Fraction(count, total, count / max(total, 1), low, high, "wilson")))
    return strata


def live_metrics(cal: Calibration, tau: float) -> LiveMetrics:
    """Everything the calibrate page shows for ``tau``, in O(log n) (same rule as the scan: ``> tau``)."""
    return LiveMetrics(
        tau=float(tau),
        memorized=int(count_above(cal.train_to_synthetic, tau)),
        n_train=len(cal.train_to_synthetic),
        copies=int(count_above(cal.synthetic_to_train, tau)),
        n_synthetic=len(cal.synthetic_to_train),
        fpr_copy=float(fraction_above(cal.val_to_train, [tau])[0]),
        fpr_memorized=float(fraction_above(cal.train_to_val, [tau])[0]),
    )


def threshold_curve(cal: Calibration, points: int = 201) -> dict[str, npt.NDArray[np.float64]]:
    """Copy fraction, memorized fraction and expected FPR over a grid of thresholds."""
    values = np.concatenate([cal.train_to_val, cal.val_to_train, cal.train_to_synthetic, cal.synthetic_to_train])
    grid = np.linspace(float(values.min()), float(values.max()), points)
    return {
        "tau": grid,
        "copy_fraction": fraction_above(cal.synthetic_to_train, grid),
        "memorized_fraction": fraction_above(cal.train_to_synthetic, grid),
        "expected_fpr_copy": fraction_above(cal.val_to_train, grid),
    }


HISTOGRAM_COLOURS = ("#0072B2", "#009E73", "#E69F00", "#CC79A7")  # Okabe-Ito: distinguishable by colour-blind readers


def score_label(method: str) -> str:
    """What the similarity axis is, for a scan's copy call."""
    if method == "verified":
        return "verified score: aligned structure correlation with the best training match"
    return "best Pearson correlation of embeddings"


def histogram_series(cal: Calibration) -> list[tuple[npt.NDArray[np.float64], str, str]]:
    """The four best-correlation distributions (values, name, colour), as every figure of them draws them."""
    return [
        (np.asarray(values, dtype=np.float64), name, colour)
        for (values, name), colour in zip(
            (
                (cal.train_to_val, "training -> validation (paper null)"),
                (cal.val_to_train, "validation -> training (held-out null)"),
                (cal.train_to_synthetic, "training -> synthetic"),
                (cal.synthetic_to_train, "synthetic -> training"),
            ),
            HISTOGRAM_COLOURS,
            strict=True,
        )
    ]


HISTOGRAM_BIN = 0.01  # one bin per hundredth of the score


def correlation_histogram(cal: Calibration, tau: float, method: str = "paper") -> go.Figure:
    """The four best-correlation distributions with the threshold drawn on them (Calibrate page)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for values, name, colour in histogram_series(cal):
        fig.add_histogram(
            x=values,
            name=name,
            opacity=0.55,
            histnorm="probability",
            xbins=dict(size=HISTOGRAM_BIN),
            marker_color=colour,
        )
    fig.add_vline(x=tau, line_color="red", annotation_text=f"tau {tau:.3f}")
    fig.update_layout(
        barmode="overlay",
        xaxis_title=score_label(method),
        yaxis_title="share",
        height=380,
        margin=dict(t=30, b=40),
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def calibration_figure(cal: Calibration, tau: float, method: str = "paper", second: float | None = None) -> go.Figure:
    """The Calibrate page's figure: the four distributions above, the fractions against the threshold below,
    on one shared threshold axis (so the two tau lines are one vertical line); ``second``: the gap rule's threshold
    (:mod:`core.detect.diagnostics`), drawn dashed beside tau."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.58, 0.42], vertical_spacing=0.06)
    for trace in correlation_histogram(cal, tau, method).data:
        fig.add_trace(trace, row=1, col=1)
    curve = threshold_curve(cal)
    for key, name, dash, colour in (  # colours apart from each other and from the histograms above
        ("copy_fraction", "copy fraction", None, "#d62728"),
        ("memorized_fraction", "memorized fraction", "dash", "#1f3a93"),
        ("expected_fpr_copy", "expected FPR (copy)", "dot", "#7f7f7f"),
    ):
        fig.add_scatter(x=curve["tau"], y=curve[key], name=name, line=dict(dash=dash, color=colour), row=2, col=1)
    fig.add_vline(x=tau, line_color="red", annotation_text=f"tau {tau:.3f}")
    if second is not None:
        fig.add_vline(
            x=second,
            line_color="purple",
            line_dash="dash",
            annotation_text=f"gap rule {second:.3f}",
            annotation_position="bottom right",
        )
    fig.update_layout(barmode="overlay", height=620, margin=dict(t=30, b=40), legend=dict(orientation="h", y=-0.12))
    fig.update_yaxes(title_text="share of samples", row=1, col=1)
    fig.update_yaxes(title_text="fraction above tau", tickformat=".0%", range=[0, 1.02], row=2, col=1)
    fig.update_xaxes(title_text=score_label(method), row=2, col=1)
    return fig


@dataclass(frozen=True)
class WorklistRow:
    """One row of the Review page's work list: a synthetic sample and its nearest training scan (the pair itself),
    whether that is a copy at the list's threshold, and what the table shows of it.

    Attributes:
        pair: the sample's nearest pair (rank 1), with its scores and, for a verified scan, its alignment.
        copy: above the list's tau.
        group_size: how many samples copy the same training scan at that tau.
        resembles_patient: the separate patient-resemblance finding (``None`` when the scan did not record it).
        samples: rows collapsed into this one (:func:`group_by_training`; ``None`` in an ungrouped list).
        item: the position in a blinded sample (``None`` in the open list).
    """

    pair: Pair
    copy: bool
    group_size: int = 0
    resembles_patient: bool | None = None
    samples: int | None = None
    item: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(synthetic ID, training ID): how verdicts name the pair."""
        return (self.pair.synthetic_id, self.pair.train_id)

    @property
    def verified(self) -> bool:
        """Scored by the verified method (an alignment was searched for)."""
        return self.pair.alignment is not None

    def columns(self, verdict: str = "") -> dict[str, Any]:
        """The table's columns: in a blinded sample only the IDs (no similarity, no call); similarity and pixel
        correlation at 3 decimals, as the pair's heading shows them (0.9945 once read as 0.995 and 0.994)."""
        p = self.pair
        ids = {"synthetic_id": p.synthetic_id, "train_id": p.train_id, "patient_id": p.patient_id}
        if self.item is not None:
            return {"your verdict": verdict, "item": self.item, **ids}
        return {
            "your verdict": verdict,
            **ids,
            "similarity": round(p.similarity, 3),
            "p_value": p.p_value,
            "pixel_corr": round(p.pixel_corr, 3),
            "copy": self.copy,
            "group_size": self.group_size,
            **(
                {"retrieval": None if p.retrieval is None else round(p.retrieval, 4), "alignment": p.alignment.label()}
                if p.alignment is not None
                else {}
            ),
            **({"resembles_patient": self.resembles_patient} if self.resembles_patient is not None else {}),
            **({"samples": self.samples} if self.samples is not None else {}),
        }


def worklist(
    pairs: list[Pair], tau: float, only_copies: bool = False, patients: dict[str, PatientRow] | None = None
) -> list[WorklistRow]:
    """One row per synthetic sample (its nearest training scan), most similar first.

    Each row says whether it is a copy at ``tau`` and how many samples copy the same training
    scan (``group_size``), so that one patient's scan can be judged once. With ``patients`` (the scan's
    ``patients.csv``) each row also says whether the sample resembles a training patient, a separate finding.
    """
    group = Counter(p.train_id for p in copies(pairs, tau))
    rows = [
        WorklistRow(
            p,
            p.is_copy(tau),
            group[p.train_id],
            patients[p.synthetic_id].resembles if patients and p.synthetic_id in patients else None,
        )
        for p in sorted(nearest_pairs(pairs), key=lambda p: (-p.similarity, p.synthetic_id))
    ]
    return [r for r in rows if r.copy] if only_copies else rows


def blinded_rows(pairs: list[Pair], keys: list[tuple[str, str]]) -> list[WorklistRow]:
    """The blinded sample's rows, in its order (``keys`` from :func:`core.study.verdicts.blinded_sample`)."""
    by_key = {(p.synthetic_id, p.train_id): p for p in nearest_pairs(pairs)}
    return [WorklistRow(by_key[key], copy=False, item=i + 1) for i, key in enumerate(keys)]


def group_by_training(rows: list[WorklistRow]) -> list[WorklistRow]:
    """Collapse work-list rows to one per training scan (its most similar sample first)."""
    seen: dict[str, WorklistRow] = {}
    for row in rows:
        train_id = row.pair.train_id
        first = seen.get(train_id)
        seen[train_id] = (
            dataclasses.replace(row, samples=1)
            if first is None
            else (dataclasses.replace(first, samples=(first.samples or 1) + 1))
        )
    return list(seen.values())


def load_study_set(summary: ScanSummary, role: str, embedding: bool = False) -> ImageSet:
    """The preprocessed images of one input set of a scanned study, exactly as its pairs were compared (on the
    verification grid, where alignments are stated). With ``embedding`` the set also holds them as the detector
    saw them: ``images`` on the embedding grid, ``compared`` on the verification grid."""
    compared = summary.compared_spec
    grouping = summary.inputs[role].patients
    return load_set(
        summary.source(role),
        summary.preprocessing if embedding else compared,
        role=role if role != "synthetic" else None,  # type: ignore[arg-type]
        slices=SliceAxis(summary.slices) if summary.slices else None,
        patients=grouping.rule if grouping is not None else None,  # the scan's own patients (the self-test splits them)
        verify_spec=compared if embedding and summary.verification is not None else None,
    )


def display_units(image: npt.NDArray[np.floating], spec: PreprocessSpec) -> tuple[npt.NDArray[np.float64], str]:
    """Undo the intensity mapping where it has units: CT-windowed data back to HU; else as is."""
    x = np.asarray(image, dtype=np.float64)
    if spec.intensity == "ct":
        low, high = spec.ct_window
        return low + (x + 1.0) / 2.0 * (high - low), "HU"
    return x, "a.u."


@functools.lru_cache(maxsize=4)
def _verifier(shape: tuple[int, ...], config: VerifyConfig) -> Verifier:
    return Verifier(shape, config)


def aligned_training(summary: ScanSummary, pair: Pair, image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The training image of ``pair`` moved by the alignment the verified scan found (unchanged otherwise), so
    that it can be compared with the synthetic image exactly as it was scored."""
    if pair.alignment is None:
        return image
    return _verifier(tuple(image.shape), summary.verify or VerifyConfig()).apply(image, pair.alignment)
