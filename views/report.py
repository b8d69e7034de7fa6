"""Report and release: the ethics-board report (HTML/PDF) and the filtered synthetic set that can be shared."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.common.errors import MemoScopeError
from core.study.formats import ReportFormat
from core.study.release import release, release_folder
from core.study.report import CHROMIUM, write_report
from views import _ui

study = _ui.require_study()
RELEASES = Path("releases")
st.title("Report and release")
summary = _ui.require_summary(study)

st.subheader("Ethics-board report")
st.caption(
    "Self-contained: images and plot embedded; training scans and patients under pseudonyms only (the key, "
    "pseudonyms.csv, stays in the study folder). Numbers are at the study threshold (below)."
)
cols = st.columns(3)
top = cols[0].number_input("Copy pairs shown as images", 0, 64, 8, key="report_top")
for col, fmt in zip(cols[1:], ReportFormat, strict=True):
    if col.button(
        f"Build {fmt.upper()}", key=f"build_{fmt}", disabled=fmt == ReportFormat.PDF and not CHROMIUM.exists()
    ):
        try:
            with st.spinner(f"Writing the {fmt.upper()} report..."):
                st.session_state[f"report::{study}::{fmt}"] = str(
                    write_report(study, study / f"report.{fmt}", fmt, int(top))
                )
        except MemoScopeError as exc:
            st.error(str(exc))
for kind, mime in ((ReportFormat.HTML, "text/html"), (ReportFormat.PDF, "application/pdf")):
    path = Path(st.session_state.get(f"report::{study}::{kind}", study / f"report.{kind}"))
    if path.is_file():
        st.download_button(
            f"Download {path.name}",
            path.read_bytes(),
            file_name=f"{study.name}-{path.name}",
            mime=mime,
            key=f"dl_{kind}",
        )

st.subheader("Release the samples that are not copies")
chosen = _ui.study_threshold(study)
st.caption(f"The report and the release use the study threshold: {chosen.label}. Change it on Calibrate.")
with st.form("release"):
    name = st.text_input(
        "Release name",
        value=study.name,
        key="release_out",
        help=f"The release is written to {RELEASES}/<name>/ (new or empty); copy it from there to share it.",
    )
    exclude = st.checkbox("Also drop samples a reviewer confirmed as copies", value=True, key="release_exclude")
    if st.form_submit_button("Write release"):
        try:
            result = release(study, release_folder(RELEASES, name), None, exclude)
        except MemoScopeError as exc:
            st.error(str(exc))
        else:
            st.success(
                f"Released {result.kept} samples to {result.out}: {result.removed_by_threshold} removed above the "
                f"threshold, {result.removed_as_confirmed} more confirmed as copies by reviewers. The folder holds "
                "manifest.csv, release.json and report.html."
            )
            for warning in result.warnings:
                st.warning(warning)
