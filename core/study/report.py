"""The ethics-board report: self-contained HTML, and PDF through Chromium.

Nothing in a report (or in a release, :mod:`core.study.release`) carries protected health information:
training scans and patients appear only under pseudonyms (``patient-0001``, ``train-00001``,
:mod:`core.study.pseudonyms`) whose key stays in the study folder (``pseudonyms.csv``, never exported), and
only pixel data is used: no DICOM header (names, IDs, dates, UIDs, institution) is ever read into a result,
shown or written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import tempfile
from itertools import combinations
from pathlib import Path

import numpy as np

from core.common.config import parse_option
from core.common.errors import MemoScopeError
from core.common.provenance import atomic_path, atomic_write_text, now_utc
from core.detect.metrics import Fraction, MemorizationMetrics, ThresholdRule, crossfit_needs
from core.detect.record import Arch
from core.io.load import source_of
from core.io.viewer import (
    apply_window,
    difference,
    difference_bar,
    difference_limit,
    orthogonal_slice,
    percentile_window,
    png_bytes,
)
from core.study import verdicts
from core.study.caveats import Caveat, CaveatKey, caveats
from core.study.formats import ReportFormat
from core.study.privacy import read_privacy
from core.study.pseudonyms import Pseudonyms
from core.study.results import ROLES, Pair, ScanResults, ScanSummary, copies, nearest_pairs
from core.study.review import (
    HISTOGRAM_BIN,
    aligned_training,
    by_patient,
    copies_by_condition,
    diagnostics_at,
    histogram_series,
    interval_note,
    load_study_set,
    metrics_at,
    nearer_than_heldout,
    sample_conditioning,
    score_label,
)
from core.study.selftest import read_selftest
from core.study.verdicts import StudyThreshold

logger = logging.getLogger(__name__)
CHROMIUM = Path("/usr/bin/chromium")


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _pct(f: Fraction) -> str:
    return f"{f.value:.1%} ({f.count}/{f.total}; 95 % CI {f.low:.1%} to {f.high:.1%})"


def _kappa(value: float) -> str:
    return "n/a (one class only)" if np.isnan(value) else f"{value:.3f}"


def _display(image: np.ndarray) -> np.ndarray:
    return orthogonal_slice(image, "axial", image.shape[2] // 2) if image.ndim == 3 else image


def _pair_images(summary: ScanSummary, pairs: list[Pair], top: int) -> list[tuple[Pair, bytes, bytes, bytes]]:
    """PNG thumbnails (synthetic, training, difference; one shared 1-99 % window) of the top copy pairs; for a
    verified scan the training scan is shown moved by the alignment that was scored."""
    if top <= 0 or not pairs:
        return []
    synthetic = load_study_set(summary, "synthetic")
    train = load_study_set(summary, "train")
    s_index = {s: i for i, s in enumerate(synthetic.ids)}
    t_index = {s: i for i, s in enumerate(train.ids)}
    out = []
    for p in pairs[:top]:
        a = _display(synthetic.images[s_index[p.synthetic_id], 0])
        b = _display(aligned_training(summary, p, train.images[t_index[p.train_id], 0]))
        window = percentile_window([a, b], 1, 99)
        out.append(
            (
                p,
                png_bytes(apply_window(a, window), 3),
                png_bytes(apply_window(b, window), 3),
                png_bytes(difference(a, b, difference_limit(window)), 3),
            )
        )
    return out


def _histogram_svg(scan: ScanResults, tau: float) -> str:
    """The four best-correlation distributions and the threshold as an inline SVG drawn by matplotlib.

    The Calibrate page draws the same series with plotly; a report embedding plotly.js was 5 MB for one static
    figure (a board prints it). Text stays text (smaller, searchable), and the file is the same on every run
    (no date, a fixed id salt), so that two reports of one study differ only where the study does.
    """
    import matplotlib
    from matplotlib.figure import Figure

    cal = scan.calibration()
    series = histogram_series(cal)
    finite = np.concatenate([v[np.isfinite(v)] for v, _, _ in series] + [np.array([tau])])
    low = np.floor(finite.min() / HISTOGRAM_BIN) * HISTOGRAM_BIN
    high = np.ceil(finite.max() / HISTOGRAM_BIN) * HISTOGRAM_BIN + HISTOGRAM_BIN
    bins = np.arange(low, high + HISTOGRAM_BIN / 2, HISTOGRAM_BIN)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "memoscope", "font.size": 9}):
        fig = Figure(figsize=(9, 3.6))
        ax = fig.add_subplot()
        for values, name, colour in series:
            values = values[np.isfinite(values)]
            if values.size:
                ax.hist(
                    values,
                    bins=bins.tolist(),
                    weights=np.full(values.size, 1 / values.size),
                    alpha=0.55,
                    color=colour,
                    label=name,
                )
        ax.axvline(tau, color="red", linewidth=1.2)
        ax.annotate(
            f"tau {tau:.3f}",
            (tau, 1),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            color="red",
        )
        ax.set_xlabel(score_label(str(scan.summary.method)))
        ax.set_ylabel("share")
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
        fig.tight_layout()
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})
    svg = out.getvalue()
    return svg[svg.index("<svg") :]  # inline: without the XML prolog and doctype


def _agreement_rows(scan: ScanResults, pairs: list[Pair], tau: float) -> list[tuple[str, str, verdicts.Agreement]]:
    study = scan.folder
    nearest = {(p.synthetic_id, p.train_id): p.similarity for p in nearest_pairs(pairs)}
    detector = verdicts.detector_calls(nearest, tau)
    rows = []
    for mode in (m.value for m in verdicts.ReviewMode):
        by = verdicts.by_reviewer(study, mode, scan)
        names = list(by)
        for k, name in enumerate(names, start=1):
            rows.append((mode, f"detector vs reviewer {k}", verdicts.agreement(detector, by[name])))  # rows: detector
        for (i, a), (j, b) in combinations(enumerate(names, start=1), 2):
            rows.append((mode, f"reviewer {i} vs reviewer {j}", verdicts.agreement(by[a], by[b])))
    return rows


def _audit_sentence(audit: verdicts.AuditCheck, n_stale: int) -> str:
    """What the audit trail check found, in one sentence for the report."""
    if audit.rows == 0:
        return "No verdicts have been recorded."
    verified = (
        f"The audit trail ({audit.rows} verdict rows) was re-verified for this report: intact, chain head "
        f"{audit.head[:16]}."
        if audit.ok
        else f"WARNING: the audit trail ({audit.rows} rows) failed verification: {'; '.join(audit.problems[:3])}."
    )
    if audit.legacy_rows:
        verified += f" {audit.legacy_rows} rows predate the hash chain and cannot be verified."
    if n_stale:
        verified += (
            f" {n_stale} verdicts were given on images this scan no longer compares; they are not counted above."
        )
    return verified


# caveats under which a flag is not yet evidence of a copy
UNCONFIRMED = {CaveatKey.NOT_ANATOMY, CaveatKey.PIXEL_DISAGREES}


HIGH_COPY_FRACTION = 0.10  # a copy fraction at or above this is the generator's habit, not an accident


def _untrained(summary: ScanSummary) -> bool:
    """Whether the scan ran without a trained detector (``--detector none``: blurred pixels retrieve)."""
    return not Arch(summary.detector.config.arch).trained


def _method_header(summary: ScanSummary) -> str:
    """The method line under the title: the copy call this scan used, not always the paper's."""
    base = "after Dar et al. (arXiv 2402.01054): a self-supervised contrastive encoder"
    if _untrained(summary):
        base = (
            "after Dar et al. (arXiv 2402.01054), without their trained encoder (no detector was trained for this "
            "scan): blurred, downsampled pixels"
        )
    if summary.method == "verified":
        call = (
            "proposes the nearest training scans, each is aligned to the sample (rotation, zoom, shift) and the "
            "correlation of the aligned images' structure decides"
        )
    else:
        call = "and exact nearest-neighbour search by Pearson correlation of embeddings decide"
    return f"{base} {call}, against a threshold calibrated on real scans of patients outside the training set."


def conclusion(metrics: MemorizationMetrics, n_confirmed: int, warned: frozenset[str] = frozenset()) -> tuple[str, str]:
    """A plain-language conclusion and recommendation from the numbers at the study's threshold.

    ``warned``: the keys of the study's caveats; when the samples are not anatomy yet, or the pixels do not confirm
    the flagged pairs, the flags are reported as unconfirmed, not as copies of patient data.

    One function: the conclusion's sentences, in the order a board reads them.
    """
    copies, mem, fpr = metrics.copies, metrics.memorized, metrics.expected_fpr_copy
    if CaveatKey.NOT_ANATOMY in warned:
        text = (
            f"The detector flags {copies.count} of {copies.total} synthetic samples, but the samples do not look like "
            "scans yet (see the caveats): this generator cannot make anatomy, so these numbers say nothing about "
            "whether it copies patient data."
        )
        advice = (
            "Do not draw a conclusion from this study. Scan a checkpoint whose samples look like scans; until then "
            "treat every flag as unconfirmed."
        )
        return text, advice
    if copies.count and UNCONFIRMED & warned and not n_confirmed:
        text = (
            f"{copies.count} of {copies.total} synthetic samples ({copies.value:.1%}, 95 % CI {copies.low:.1%} to "
            f"{copies.high:.1%}) are closer to a training scan than the threshold allows by the detector's measure, "
            "but the pixels of most flagged pairs do not confirm a copy (see the caveats): these are unconfirmed "
            f"flags, not established copies. About {fpr:.1%} of genuinely new scans would also be flagged."
        )
        advice = (
            "Have reviewers look at the flagged pairs on the Review page before deciding; until they confirm copies, "
            "do not share the flagged samples, and do not report them as copies of patient data."
        )
        return text, advice
    if copies.count == 0:
        text = (
            f"None of the {copies.total} synthetic samples was closer to a training scan than the calibrated threshold "
            f"allows (95 % upper bound {copies.high:.1%})."
        )
        advice = (
            "No sample needs removing on this evidence. The check finds near-copies the detector can see; it does not "
            "prove that no patient information is reproduced, so keep the usual data-sharing safeguards."
        )
        if "not_new" in warned:
            advice = (
                "No sample is called a copy, but many are nearer to a training scan than any real held-out scan is "
                "(see the caveats): have reviewers look at them on the Review page before sharing, and keep the usual "
                "data-sharing safeguards."
            )
    else:
        text = (
            f"{copies.count} of {copies.total} synthetic samples ({copies.value:.1%}, 95 % CI {copies.low:.1%} to "
            f"{copies.high:.1%}) are closer to a training scan than real scans of other patients usually are: they are "
            f"likely copies of patient data. {mem.count} of {mem.total} training scans ({mem.value:.1%}, 95 % CI "
            f"{mem.low:.1%} to {mem.high:.1%}, {mem.method}) have such a copy. About {fpr:.1%} of genuinely new scans "
            "would also be flagged at this threshold."
        )
        advice = (
            "Do not share this synthetic set as it is. Remove the flagged samples (MemoScope's release filter does "
            "this and "
            "records what it removed)"
            + (f", including the {n_confirmed} pairs reviewers confirmed as copies" if n_confirmed else "")
            + (
                f". With {copies.value:.0%} of the samples copies, the generator reproduces its training data: "
                "retrain it with more data, augmentation or fewer epochs before sharing its samples."
                if copies.value >= HIGH_COPY_FRACTION
                else "; if copies recur in later samples, retrain the generator with more data, augmentation or fewer "
                "epochs."
            )
        )
    return text, advice


def build_report(
    study: str | Path, top: int = 8, release_note: str = "", threshold: StudyThreshold | None = None
) -> str:
    """The self-contained HTML report of a scanned study (images and plot embedded).

    ``threshold``: the threshold the report judges at (default: the study's, saved or the scan's).
    ``release_note``: for a report written with a release, what the release did (kept, removed, its threshold).

    One function: the report's HTML in one template, in reading order; each section is computed by a helper above.
    """
    if top < 0:
        raise MemoScopeError(f"--top {top}: the number of copy pairs shown as images must be 0 or more.")
    study = Path(study)
    scan = ScanResults.open(study)
    summary = scan.summary
    pairs = scan.pairs()
    names = Pseudonyms.of(pairs)
    names.write_key(study, pairs)
    chosen = threshold or verdicts.study_threshold(study, scan)
    tau = chosen.value
    metrics = metrics_at(scan, tau, chosen.rule, chosen.percentile)
    flagged = sorted(copies(pairs, tau), key=lambda p: -p.similarity)
    confirmed = {(d.synthetic_id, d.train_id) for d in verdicts.decisions(study, scan=scan) if d.verdict == "copy"}
    audit = verdicts.verify_audit(study)
    stale = verdicts.stale_decisions(study, scan)
    diagnosis = diagnostics_at(scan, tau)
    found = caveats(summary, metrics, pairs, nearer_than_heldout(scan, pairs), diagnosis)
    warned = frozenset(c.key for c in found)
    text, advice = conclusion(metrics, len(confirmed), warned)
    e = html.escape
    inputs = summary.inputs
    rows = "".join(
        f"<tr><td>{role}</td><td>{inputs[role].n}</td>"
        f"<td>{inputs[role].n_patients if role != 'synthetic' else '-'}</td>"
        f"<td>{e(inputs[role].patient_rule)}</td><td><code>{inputs[role].content_hash[:16]}</code></td></tr>"
        for role in ROLES
    )
    detector = summary.detector
    pct = f", percentile {chosen.percentile:g}" if chosen.percentile is not None else ""
    if chosen.set_by is None:
        source = "the scan's calibration"
    elif chosen.set_at:
        source = f"saved by {chosen.set_by} on {chosen.set_at[:10]} (the scan calibrated {summary.tau:.3f})"
    else:
        source = f"given for {chosen.set_by} (the scan calibrated {summary.tau:.3f})"
    conditioned = sample_conditioning(summary)
    pair_html = "".join(
        f"<figure>{_img(a, 'synthetic')}{_img(b, 'training')}{_img(d, 'difference')}<figcaption>synthetic "
        f"{e(p.synthetic_id)} vs "
        f"{names.scans[p.train_id]} ({names.patients[p.patient_id]}): similarity {p.similarity:.3f}, p-value "
        f"{p.p_value:.3g}, "
        f"pixel correlation {p.pixel_corr:.3f}{_generated_with(conditioned, p.synthetic_id)}</figcaption></figure>"
        for p, a, b, d in _pair_images(summary, flagged, top)
    ) or (
        f"<p>{len(flagged)} pair(s) are above the threshold; none is shown as images (top {top}).</p>"
        if flagged
        else "<p>No pair is above the threshold.</p>"
    )
    agreement = _agreement_rows(scan, pairs, tau)
    agreement_html = (
        (
            "<table><tr><th>verdicts</th><th>comparison</th><th>pairs</th><th>agreement</th><th>Cohen's "
            "kappa</th><th>who said what (pairs)</th><th>unsure left out</th></tr>"
            + "".join(
                f"<tr><td>{m}</td><td>{c}</td><td>{a.n}</td><td>{format(a.accuracy, '.1%') if a.n else 'n/a'}</td>"
                f"<td>{_kappa(a.kappa)}</td><td>{_confusion_html(c, a.matrix)}</td><td>{a.excluded_unsure}</td></tr>"
                for m, c, a in agreement
            )
            + "</table>"
        )
        if agreement
        else "<p>No reviewer verdicts recorded.</p>"
    )
    v = summary.versions
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MemoScope report: {e(study.name)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
figure{{display:inline-block;margin:6px}}img{{image-rendering:pixelated;margin-right:3px}}
.key{{font-size:1.1em;background:#f4f4f4;padding:.6em}}</style></head><body>
<h1>Memorization check: {e(study.name)}</h1>
<p>Generated {now_utc()} by MemoScope {e(v.get("memoscope", "?"))}. Method: {e(_method_header(summary))}</p>
<h2>Conclusion</h2><p class="key">{e(text)}</p><p><b>Recommendation.</b> {e(advice)}</p>
{_privacy_html(study, summary)}
{f"<h2>This release</h2><p>{e(release_note)}</p>" if release_note else ""}
<h2>What was checked</h2>
<table><tr><th>set</th><th>images</th><th>patients</th><th>patients from</th><th>content hash</th></tr>{rows}</table>
<ul><li>Generator checkpoint: hash <code>{e(str(summary.checkpoint_hash)[:16])}</code></li>
<li>Detector: {e(detector.config.arch)} to {detector.config.embed_dim} dimensions,
{e(detector.config.augmentation)} augmentation, hash <code>{e(detector.hash[:16])}</code></li>
<li>Preprocessing: {e(summary.preprocessing.describe())} (settings in the appendix)</li>
<li>Versions: {e(", ".join(f"{k} {val}" for k, val in sorted(v.items())))}</li></ul>
<h2>Threshold and results</h2>
<ul><li>Threshold rule <b>{e(chosen.rule)}</b>{e(pct)} ({e(ThresholdRule(chosen.rule).meaning)}):
tau = <b>{tau:.3f}</b>, {e(source)}</li>
<li>{e(diagnosis.describe())}</li>
<li>Memorized training fraction: <b>{_pct(metrics.memorized)}</b></li>
<li>Copy fraction among synthetic samples: <b>{_pct(metrics.copies)}</b></li>
<li>Expected false-positive rate: copies {metrics.expected_fpr_copy:.1%}, memorization
{metrics.expected_fpr_memorized:.1%}</li>{_unseen_html(summary, tau)}{_resemblance_html(summary)}</ul>
<p>{e(_method_sentence(summary))}</p>
{_caveats_html(found)}
<p>{e(by_patient(scan, tau).describe())}</p>
<p>{e(interval_note(scan, metrics))} No interval includes the uncertainty of the threshold itself.</p>
{_selftest_html(study, summary)}
{_strata_html(scan, tau, conditioned)}
<h2>Correlation distributions</h2>{_histogram_svg(scan, tau)}
<h2>Top copy pairs</h2><p>Synthetic | training | difference, one shared window per pair. The difference is
synthetic minus training on a fixed scale of half that window: {_img(png_bytes(difference_bar(160, 8)), "colour bar")}
blue darker, white equal, red brighter. Training scans and patients are shown under pseudonyms only.</p>{pair_html}
<h2>Reviewer agreement</h2>{agreement_html}
<p>{e(_audit_sentence(audit, len(stale)))}</p>
{GLOSSARY_HTML}
<h2>Appendix: settings</h2><p>Preprocessing:</p><pre>{e(json.dumps(summary.preprocessing.settings(), indent=1))}</pre>
</body></html>
"""


def _confusion_html(comparison: str, matrix: list[list[int]]) -> str:
    """The 2 x 2 agreement table with its rows and columns named (``first vs second``)."""
    first, _, second = comparison.partition(" vs ")
    (nn, nc), (cn, cc) = matrix
    e = html.escape
    return (
        f"<table><tr><th></th><th>{e(second)}: not a copy</th><th>{e(second)}: copy</th></tr>"
        f"<tr><th>{e(first)}: not a copy</th><td>{nn}</td><td>{nc}</td></tr>"
        f"<tr><th>{e(first)}: copy</th><td>{cn}</td><td>{cc}</td></tr></table>"
    )


GLOSSARY_HTML = """<h2>Glossary</h2><dl>
<dt>Threshold (tau)</dt><dd>The similarity above which a synthetic sample is called a copy of its most similar
training scan. It is set from real scans of patients who were not in the training data: how similar do
different people's scans get? The rule and the percentile used are stated above.</dd>
<dt>95 % interval (CI)</dt><dd>The range of values consistent with the data at the usual 95 % level: had other
samples been drawn from the same model, the fraction would usually have fallen in this range.</dd>
<dt>p-value</dt><dd>For one pair: the share of real scans of other patients at least as similar to a training scan.
It cannot be smaller than one over the number of such real scans, so with a small validation set no single pair
can be called significant.</dd>
<dt>Expected false-positive rate</dt><dd>The share of real scans of patients outside the training data that the
threshold would call copies. A copy fraction close to it means little: real new patients would score as high.</dd>
<dt>Unseen-patient false-positive rate</dt><dd>The same, measured on validation patients the threshold was not
calibrated on (each held out in turn): how the threshold carries over to new people.</dd>
<dt>Verified call</dt><dd>Each synthetic sample's nearest training scans are aligned to it (turned, zoomed and moved
a little) and the correlation of their aligned structure is the similarity: a copy that was shifted or blurred still
scores as a copy.</dd>
<dt>heldout-patient rule</dt><dd>The threshold a scan of a new patient would exceed only 5 % of the time, allowing
for how much patients differ from each other, not only scans (the larger of a modelled bound and the validation
patients' own 95th percentile).</dd>
<dt>Wilson interval, bootstrap</dt><dd>Two ways to put a 95 % interval on a fraction: Wilson from the count itself;
the bootstrap by recomputing the fraction on resampled patients or volumes (used when several scans come from one
person, which are not independent).</dd>
<dt>Precision, recall, F1, AUROC</dt><dd>Precision: of the flagged samples, the share that are copies. Recall: of the
copies, the share flagged. F1 combines the two. AUROC: how well the score ranks copies above non-copies (1 is
perfect, 0.5 is chance).</dd>
<dt>Cohen's kappa</dt><dd>Agreement between two raters beyond what chance alone would give. When nearly every pair
falls in one class, chance agreement is already high, so kappa can be near 0 (or undefined) even when the raters
agree on most pairs.</dd>
</dl>"""


def _privacy_html(study: Path, summary: ScanSummary) -> str:
    """The three questions a board asks and how this study answers each (copies above; membership and set-level
    copying from ``privacy.json`` when it belongs to this scan)."""
    privacy = read_privacy(study)
    if privacy is None or privacy.scan_id != summary.scan_id:
        return (
            "<h2>Beyond single copies</h2><p>Not tested for this scan: whether someone holding the weights could "
            "tell who was in the training set, and whether the samples as a whole stay closer to the training scans "
            "than new patients' scans do (<code>python -m core privacy --study</code>).</p>"
        )
    membership, ct, auth, near = privacy.sentences()
    items = (
        ("Did any sample copy a training scan?", "The conclusion above (the copy call, with human review)."),
        ("Could someone holding the weights tell who was in the training set?", membership),
        (
            "Do the samples as a whole stay closer to the training scans than new patients' scans do?",
            f"{ct} {auth} {near}",
        ),
    )
    rows = "".join(f"<li><b>{html.escape(q)}</b> {html.escape(a)}</li>" for q, a in items)
    return (
        f"<h2>Three questions</h2><ol>{rows}</ol><p>These tests need no threshold. A negative result on a small set "
        "(few patients, few samples) is weak evidence, not proof that nothing leaks.</p>"
    )


def _selftest_html(study: Path, summary: ScanSummary) -> str:
    tested = read_selftest(study, summary.scan_id)
    if tested is None:
        return (
            "<h2>What this detector catches on this data</h2><p>No self-test was run on this scan "
            "(<code>python -m core selftest</code>).</p>"
        )
    fpr = tested.unseen_fpr
    table = tested.recall_table()
    head = "".join(f"<th>{html.escape(k)}</th>" for k in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>" for row in table)
    return (
        "<h2>What this detector catches on this data</h2>"
        f"<p>Self-test: changed copies of this study's training scans were planted among real scans of "
        f"{tested.unseen_patients} validation patient(s) kept out of the calibration; the threshold was calibrated on "
        f"the other {tested.calibration_patients} exactly as the scan did ({html.escape(str(tested.rule))}, tau "
        f"{tested.tau:.3f}). Real scans of the unseen patients called copies: <b>{fpr.count}/{fpr.total}</b> (95 % CI "
        f"{fpr.low:.0%} to {fpr.high:.0%}); precision {tested.precision:.2f}, F1 {tested.f1:.2f}, AUROC "
        f"{tested.auroc:.3f}. Copies found (flagged and matched to their source) per change and strength:</p>"
        f"<table><tr>{head}</tr>{body}</table>"
    )


def _caveats_html(found: list[Caveat]) -> str:
    if not found:
        return ""
    items = "".join(f"<li>{html.escape(c.text)}</li>" for c in found)
    return f"<h3>Before relying on these numbers</h3><ul>{items}</ul>"


def _method_sentence(summary: ScanSummary) -> str:
    if summary.method == "verified":
        proposes = (
            "Blurred, downsampled pixels (no detector was trained for this scan) propose"
            if _untrained(summary)
            else "The contrastive embedding (and a blurred-pixel search) proposes"
        )
        return (
            f"Copy call: verified. {proposes} training scans; "
            "each is aligned to the synthetic sample by a small rotation and shift, and the correlation of the "
            "aligned fine structure is the score above. The threshold is calibrated on the same score between "
            "real scans of different patients."
        )
    if _untrained(summary):
        return (
            "Copy call: the correlation of blurred, downsampled pixels is the score above (no detector was trained "
            "for this scan, so this is not Dar et al.'s contrastive call)."
        )
    return "Copy call: as in Dar et al., the correlation of the contrastive embeddings is the score above."


def _resemblance_html(summary: ScanSummary) -> str:
    found = summary.patient_resemblance
    return "" if found is None else f"<li>{html.escape(found.describe())}</li>"


def _unseen_html(summary: ScanSummary, tau: float) -> str:
    unseen = summary.fpr_unseen
    if unseen is None:
        if summary.threshold.percentile is None or not ThresholdRule(summary.threshold.rule).uses_heldout_null:
            return ""
        needs = crossfit_needs(summary.threshold.percentile, ThresholdRule(summary.threshold.rule))
        return (
            "<li>How the threshold transfers to patients it was not calibrated on could not be measured: the "
            f"{html.escape(str(summary.threshold.rule))} rule needs {html.escape(needs)}.</li>"
        )
    where = "" if tau == summary.tau else f" (measured at the scan's threshold {summary.tau:.3f})"
    return (
        f"<li>Real scans of patients the threshold was not calibrated on that are called copies: "
        f"<b>{unseen.value:.1%}</b> ({unseen.count}/{unseen.total}, 95 % CI {unseen.low:.1%} to {unseen.high:.1%}; "
        f"{html.escape(unseen.method)}){html.escape(where)}</li>"
    )


def write_pdf(html_path: Path, pdf_path: Path) -> None:
    """Print the HTML report to PDF with the system's Chromium (no download)."""
    if not CHROMIUM.exists():
        raise MemoScopeError(f"PDF needs Chromium at {CHROMIUM}: apt-get install chromium (or use --format html).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, atomic_path(pdf_path) as tmp:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"],
        )
        page = browser.new_page()
        page.goto(html_path.resolve().as_uri(), wait_until="load")
        page.pdf(
            path=str(tmp),
            format="A4",
            print_background=True,
            margin={"top": "12mm", "bottom": "12mm", "left": "10mm", "right": "10mm"},
        )
        browser.close()


def _generated_with(conditioned: dict[str, dict[str, float]], synthetic_id: str) -> str:
    values = conditioned.get(source_of(synthetic_id))
    return "; generated with " + ", ".join(f"{html.escape(k)} {v:g}" for k, v in values.items()) if values else ""


def _strata_html(scan: ScanResults, tau: float, conditioned: dict[str, dict[str, float]]) -> str:
    """Copies per band of each conditioning value (conditional LDMs only)."""
    if not conditioned:
        return ""
    parts = [
        "<h2>Copies by conditioning</h2><p>The samples came from a conditional LDM; each value in bands, with "
        "Wilson intervals.</p>"
    ]
    for name in next(iter(conditioned.values())):
        rows = "".join(
            f"<tr><td>{html.escape(s.label)}</td><td>{_pct(s.copies)}</td></tr>"
            for s in copies_by_condition(scan, tau, name, conditions=conditioned)
        )
        parts.append(f"<table><tr><th>{html.escape(name)}</th><th>copies among the samples</th></tr>{rows}</table>")
    return "".join(parts)


def write_report(study: str | Path, out: str | Path, fmt: str = ReportFormat.HTML, top: int = 8) -> Path:
    """Write the report as ``fmt`` (:class:`ReportFormat`) to ``out``."""
    out = Path(out)
    fmt = parse_option(ReportFormat, fmt, "--format")
    text = build_report(study, top)
    if fmt == ReportFormat.HTML:
        atomic_write_text(out, text)
        return out
    with tempfile.TemporaryDirectory() as folder:
        html_path = Path(folder) / "report.html"  # Chromium renders by suffix: a .tmp file prints as plain text
        html_path.write_text(text, encoding="utf-8")
        write_pdf(html_path, out)
    return out
