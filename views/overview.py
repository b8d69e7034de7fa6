"""Overview: the open study at a glance and what is still to be done."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.detect.record import is_detector_folder
from core.study import jobs, results
from core.study.results import ROLES
from core.study.review import metrics_at
from core.study.selftest import read_selftest
from views import _ui

study = _ui.require_study()
inputs = _ui.inputs(study)
summary = _ui.summary(study)
st.title(f"Study: {study.name}")

if summary is None:
    st.info("Not scanned yet: no memorization numbers until the detector has embedded the sets.")
else:
    chosen = _ui.study_threshold(study)  # the same threshold Review, Agreement, the report and the release use
    at = metrics_at(_ui.require_scan(study), chosen.value, chosen.rule, chosen.percentile)
    mem, cop = at.memorized, at.copies
    cols = st.columns(4)
    cols[0].metric("Threshold", f"{chosen.value:.3f}", help=f"study threshold: {chosen.label}")
    cols[1].metric(
        "Memorized",
        f"{mem.value:.1%}",
        help=f"training scans with a synthetic copy: {mem.count}/{mem.total}; 95 % CI {mem.low:.1%} to "
        f"{mem.high:.1%} ({mem.method})",
    )
    cols[2].metric(
        "Copies",
        f"{cop.value:.1%}",
        help=f"synthetic samples that copy a training scan: {cop.count}/{cop.total}; 95 % CI {cop.low:.1%} to "
        f"{cop.high:.1%} ({cop.method})",
    )
    cols[3].metric(
        "Expected FPR",
        f"{at.expected_fpr_copy:.1%}",
        help="expected false-positive rate: the share of real held-out scans the threshold would call copies",
    )
    st.caption(
        f"Memorized training {mem.value:.1%} (95 % CI {mem.low:.1%} to {mem.high:.1%}); copies "
        f"{cop.value:.1%} (95 % CI {cop.low:.1%} to {cop.high:.1%}). Intervals resample scans as if "
        f"independent, with the threshold held fixed (the next line takes patients as the unit). "
        f"Study threshold: {chosen.label}."
    )
    st.caption(_ui.patient_level(study, chosen.value).describe())
    st.caption(
        "Copy call: "
        + (
            "**verified**: the embedding proposes training scans, each is aligned (rotation, shift) and the "
            "correlation of the aligned structure decides."
            if summary.method == "verified"
            else "**paper** (Dar et al.): the embedding correlation decides."
        )
    )
    unseen = summary.fpr_unseen
    if unseen is None and summary.method == "verified":
        st.caption(
            "How this threshold transfers to patients it was not calibrated on could not be measured: that needs "
            "validation scans of at least 2 patients, and enough scans left when one patient is held out for the "
            f"{summary.threshold.rule} rule. Run the self-test below for a direct measurement."
        )
    if unseen is not None:
        where = "" if chosen.value == summary.tau else f" (measured at the scan's threshold {summary.tau:.3f})"
        st.caption(
            f"Real scans of patients the threshold was not calibrated on called copies: **{unseen.value:.1%}** "
            f"({unseen.count}/{unseen.total}; 95 % CI {unseen.low:.1%} to {unseen.high:.1%}; {unseen.method})"
            f"{where}."
        )

    if summary.patient_resemblance is not None:
        st.caption(summary.patient_resemblance.describe())

    _ui.show_caveats(study)
    tested = read_selftest(study, summary.scan_id)
    st.subheader("What this detector catches on your data")
    if tested is None:
        st.caption(
            "No self-test of this scan yet: the Detector page (or `python -m core selftest --study ...`) plants "
            "changed copies of your training scans among real scans of validation patients kept out of the "
            "calibration and measures what the copy call finds."
        )
    else:
        fpr = tested.unseen_fpr
        st.caption(
            f"Self-test ({tested.method}, {tested.rule}, tau {tested.tau:.3f} calibrated on "
            f"{tested.calibration_patients} validation patients): real scans of {tested.unseen_patients} unseen "
            f"patients called copies **{fpr.count}/{fpr.total}** (95 % CI {fpr.low:.0%} to {fpr.high:.0%}); "
            f"precision {tested.precision:.2f}, F1 {tested.f1:.2f}, AUROC {tested.auroc:.3f}. Copies found per change "
            "(a copy counts when flagged and matched to its source):"
        )
        st.dataframe(tested.recall_table(), hide_index=True)

st.subheader("Data and models")
rows = []
for role in ROLES:
    info = summary.inputs[role] if summary else None
    rows.append(
        {
            "set": role,
            "source": info.source if info else str(inputs.get(role) or "not set"),
            "images": info.n if info else None,
            "patients": info.n_patients if info else None,
            "content hash": info.content_hash[:12] if info else "",
        }
    )
st.dataframe(rows, hide_index=True)
checkpoint = (summary.checkpoint if summary else None) or inputs.get("checkpoint")
detector = summary.detector if summary else None
st.markdown(
    f"- LDM checkpoint: `{checkpoint or 'none (synthetic images brought in)'}`"
    + (f", hash `{str(summary.checkpoint_hash)[:12]}`" if summary and summary.checkpoint_hash else "")
)
st.markdown(
    f"- Detector: `{detector.path if detector else inputs.get('detector') or 'not trained yet'}`"
    + (f", {detector.config['arch']}, hash `{detector.hash[:12]}`" if detector else "")
)
if summary:
    st.markdown(
        f"- Preprocessing: {summary.preprocessing.describe()}; scanned {summary.finished_at} with MemoScope "
        f"{summary.versions.get('memoscope', '?')}, torch {summary.versions.get('torch', '?')}"
        + (f" on {summary.device}" if summary.device else "")
    )
    found = summary.search
    if found is not None and found.sample:
        st.warning(
            f"The training set ({found.database} scans) was searched with an approximate index ({found.index}): it "
            f"found the exact nearest neighbour for {found.recall_at_1:.1%} of {found.sample} sampled synthetic "
            f"samples, at most {found.max_shortfall:.3f} correlation short. Rescan with a larger --approximate-above "
            "for exact search."
        )

st.subheader("To do")
synthetic = inputs.get("synthetic") or (summary.source("synthetic") if summary else None)
todo = []
if not synthetic or not Path(synthetic).exists():
    todo.append(("No synthetic samples yet.", "views/generate.py", "Generate samples"))
if not (detector or inputs.get("detector") or is_detector_folder(study / results.DETECTOR)):
    todo.append(("No detector yet.", "views/detector.py", "Train or load a detector"))
if summary is None:
    todo.append(("Not embedded and scanned yet.", "views/detector.py", "Embed and scan"))
else:
    todo.append(("Check the threshold against the null distributions.", "views/calibrate.py", "Calibrate"))
    todo.append((f"Review the {summary.copies.count} flagged copies.", "views/review.py", "Review pairs"))
for text, page, label in todo:
    cols = st.columns([3, 1])
    cols[0].write(text)
    cols[1].page_link(page, label=label)
running = jobs.active_job(study)
if running:
    st.info(f"A {running.kind} job is running ({running.fraction:.0%}); its page shows the progress.")
