"""MemoScope review app: navigation and the sidebar that opens or creates a study. Pages live in pages/."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from core.data import discover
from core.errors import MemoScopeError
from core.study import open_study

DEFAULT_STUDY = "demo-2d"  # built by `make demo`, committed, opened first
STUDIES = Path("studies")

st.set_page_config(page_title="MemoScope", layout="wide")

pages = [
    st.Page("pages/overview.py", title="Overview", url_path="overview", default=True),
    st.Page("pages/generate.py", title="Generate", url_path="generate"),
    st.Page("pages/detector.py", title="Detector", url_path="detector"),
    st.Page("pages/calibrate.py", title="Calibrate", url_path="calibrate"),
    st.Page("pages/review.py", title="Review", url_path="review"),
    st.Page("pages/agreement.py", title="Agreement", url_path="agreement"),
    st.Page("pages/report.py", title="Report", url_path="report"),
]
navigation = st.navigation(pages)


def _studies() -> list[str]:
    return sorted(p.name for p in STUDIES.iterdir() if p.is_dir() and not p.name.startswith(".")) if STUDIES.is_dir() else []


def _create_study(name: str, train: str, val: str, synthetic: str, checkpoint: str, dims: int, size: int, slices: str) -> str:
    """Check the inputs the way a scan will, then write the study folder's ``study.json``."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise MemoScopeError("Study name: use letters, digits, '-', '_' or '.', starting with a letter or digit.")
    folder = STUDIES / name
    if folder.exists():
        raise MemoScopeError(f"{folder} already exists; open it instead or choose another name.")
    for label, source, role in (("Training", train, "train"), ("Validation", val, "val")):
        if not source:
            raise MemoScopeError(f"{label} images: enter a folder or a CSV manifest.")
        discover(source, role)  # names the file and what is wrong
    if synthetic:
        discover(synthetic)
    if checkpoint and not (Path(checkpoint) / "ldm.json").is_file():
        raise MemoScopeError(f"{checkpoint}: not a checkpoint folder (no ldm.json).")
    study = open_study(folder)
    study.set_inputs({"train": train, "val": val, "synthetic": synthetic or None, "checkpoint": checkpoint or None,
                      "dims": dims, "size": size, "slices": slices or None})
    return name


with st.sidebar:
    st.markdown("**MemoScope**: patient-data copies among synthetic scans")
    names = _studies()
    if "study" not in st.session_state and names:
        st.session_state["study"] = str(STUDIES / (DEFAULT_STUDY if DEFAULT_STUDY in names else names[0]))
    current = Path(st.session_state["study"]).name if st.session_state.get("study") else None
    if names:
        chosen = st.selectbox("Study", names, index=names.index(current) if current in names else 0, key="study_select")
        st.session_state["study"] = str(STUDIES / chosen)
    else:
        st.caption("No study yet: run `make demo`, or create one below.")
    with st.expander("New study"), st.form("new_study", clear_on_submit=False):
        name = st.text_input("Name", placeholder="knee-ldm-v2", key="new_name")
        train = st.text_input("Training images (folder or manifest)", placeholder="data/demo/2d/manifest.csv", key="new_train")
        val = st.text_input("Validation images (other patients)", placeholder="data/demo/2d/manifest.csv", key="new_val")
        checkpoint = st.text_input("LDM checkpoint folder (optional)", placeholder="checkpoints/demo-2d-noaug-e0300", key="new_checkpoint")
        synthetic = st.text_input("Existing synthetic folder (optional)", key="new_synthetic")
        col1, col2 = st.columns(2)
        dims = col1.selectbox("Dimensions", (2, 3))
        size = col2.number_input("Size per axis", min_value=8, max_value=512, value=64, step=8)
        slices = st.selectbox("2D slices of 3D files", ("", "axial", "coronal", "sagittal"))
        if st.form_submit_button("Create study", key="create_study"):
            try:
                created = _create_study(name.strip(), train.strip(), val.strip(), synthetic.strip(), checkpoint.strip(), int(dims), int(size), slices)
            except MemoScopeError as exc:
                st.error(str(exc))
            else:
                st.session_state["study"] = str(STUDIES / created)
                st.session_state.pop("study_select", None)
                st.rerun()

navigation.run()
