"""MemoScope review app: navigation and the sidebar that opens or creates a study.

Pages live in views/, not pages/: Streamlit serves a pages/ folder as its own multipage app, so a direct
URL such as /review would open that page without this script (no study, no navigation).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.common.errors import MemoScopeError
from core.io.patients import HELP as PATIENTS_HELP
from core.study.store import create_study, working_copy

DEFAULT_STUDY = "demo-2d"  # built by `make demo`, committed, opened first
STUDIES = Path("studies")

st.set_page_config(page_title="MemoScope", layout="wide")

overview = st.Page("views/overview.py", title="Overview", url_path="overview")


def _home() -> None:
    """``/`` opens the Overview at its own URL, keeping the query (``?reviewer=``): the default page's URL would
    otherwise be ``/`` only, and a bookmarked ``/overview`` would not exist."""
    st.switch_page(overview, query_params=st.query_params.to_dict())


pages = [
    st.Page(_home, title="Home", url_path="home", default=True, visibility="hidden"),
    overview,
    st.Page("views/generate.py", title="Generate", url_path="generate"),
    st.Page("views/detector.py", title="Detector", url_path="detector"),
    st.Page("views/calibrate.py", title="Calibrate", url_path="calibrate"),
    st.Page("views/review.py", title="Review", url_path="review"),
    st.Page("views/agreement.py", title="Agreement", url_path="agreement"),
    st.Page("views/compare.py", title="Compare", url_path="compare"),
    st.Page("views/report.py", title="Report", url_path="report"),
]
navigation = st.navigation(pages)


def _studies() -> list[str]:
    return (
        sorted(p.name for p in STUDIES.iterdir() if p.is_dir() and not p.name.startswith("."))
        if STUDIES.is_dir()
        else []
    )


def _open_chosen() -> None:
    st.session_state["study"] = str(working_copy(STUDIES / st.session_state["study_select"]))
    for param in ("pair", "bpair", "blind"):  # a position in another study's list means nothing here
        st.query_params.pop(param, None)


def _submit_new_study() -> None:
    """Form callback (runs before the rerun, so it may set the study selector)."""
    get = st.session_state.get
    try:
        created = create_study(
            STUDIES,
            get("new_name", "").strip(),
            {
                "train": get("new_train", "").strip(),
                "val": get("new_val", "").strip(),
                "synthetic": get("new_synthetic", "").strip(),
                "checkpoint": get("new_checkpoint", "").strip(),
                "dims": int(get("new_dims", 2)),
                "size": int(get("new_size", 64)),
                "slices": get("new_slices", ""),
                "patients": get("new_patients", "").strip() or "auto",
            },
        )
    except MemoScopeError as exc:
        st.session_state["new_study_error"] = str(exc)
    else:
        st.session_state.pop("new_study_error", None)
        st.session_state["study"] = str(created.path)
        st.session_state["study_select"] = created.path.name


with st.sidebar:
    st.markdown("**MemoScope**: patient-data copies among synthetic scans")
    names = _studies()
    if "study" not in st.session_state and names:  # the study in the URL (a reload, a shared link), else the demo
        asked = st.query_params.get("study")
        first = asked if asked in names else DEFAULT_STUDY if DEFAULT_STUDY in names else names[0]
        st.session_state["study"] = str(working_copy(STUDIES / first))
        st.session_state["study_select"] = first
    current = Path(st.session_state["study"]) if st.session_state.get("study") else None
    chosen_name = st.session_state.get("study_select")
    if chosen_name:  # kept in the URL on every page: a reload opens this study, not the default one
        st.query_params["study"] = chosen_name
    if st.session_state.get("reviewer"):  # and who is reviewing, whichever page was opened since
        st.query_params["reviewer"] = st.session_state["reviewer"]
    if names:
        if "study_select" not in st.session_state:  # a study may also live outside studies/: then none is selected
            inside = current if current is not None and current.parent == STUDIES and current.name in names else None
            st.session_state["study_select"] = inside.name if inside is not None else None
        st.selectbox(
            "Study",
            names,
            key="study_select",
            placeholder=str(current) if current else "choose a study",
            on_change=_open_chosen,
        )
    else:
        st.caption("No study yet: run `make demo`, or create one below.")
    if "presentation" not in st.session_state:  # kept in the URL: a reload or a shared link stays pseudonymous
        st.session_state["presentation"] = st.query_params.get("present") == "1"
    if st.toggle(
        "Presentation mode",
        key="presentation",
        help="Show training scans and patients under the report's pseudonyms on every page, for showing the app "
        "to an ethics board. Synthetic sample IDs are not patient data and stay as they are.",
    ):
        st.query_params["present"] = "1"
    else:
        st.query_params.pop("present", None)
    with st.expander("New study", expanded="new_study_error" in st.session_state), st.form("new_study"):
        st.text_input("Name", placeholder="knee-ldm-v2", key="new_name")
        manifest_help = (
            "A folder with one subfolder per patient, or a CSV manifest with columns path,patient_id[,split]: "
            "paths relative to the CSV; with a split column (train / val) one manifest serves both sets, each "
            "taking its own rows (`python -m core split` writes one by patient). Training and validation must not "
            "share a patient: this is checked before the study is created."
        )
        st.text_input(
            "Training images (folder or manifest)",
            placeholder="data/demo/2d/manifest.csv",
            key="new_train",
            help=manifest_help,
        )
        st.text_input(
            "Validation images (other patients)",
            placeholder="data/demo/2d/manifest.csv",
            key="new_val",
            help=manifest_help,
        )
        st.text_input(
            "LDM checkpoint folder (optional)", placeholder="checkpoints/demo-2d-noaug-e0300", key="new_checkpoint"
        )
        st.text_input("Existing synthetic folder (optional)", key="new_synthetic")
        col1, col2 = st.columns(2)
        col1.selectbox("Dimensions", (2, 3), key="new_dims")
        col2.number_input("Size per axis", min_value=8, max_value=512, value=64, step=8, key="new_size")
        st.selectbox("2D slices of 3D files", ("", "axial", "coronal", "sagittal"), key="new_slices")
        st.text_input("Patients from", placeholder="auto", key="new_patients", help=PATIENTS_HELP)
        st.form_submit_button("Create study", key="create_study", on_click=_submit_new_study)
        if "new_study_error" in st.session_state:
            st.error(st.session_state["new_study_error"])

try:
    navigation.run()
except MemoScopeError as exc:  # a damaged study or input: a message naming the file and what to do, not a traceback
    st.error(str(exc))
