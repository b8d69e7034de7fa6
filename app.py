"""MemoScope app entry: opens a study folder and shows its scan summary (the full review app is its own issue)."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

st.set_page_config(page_title="MemoScope", layout="wide")
st.title("MemoScope")
st.caption("Find patient-data copies among the samples of a latent diffusion model.")

studies = sorted(p.parent for p in Path("studies").glob("*/summary.json"))
if not studies:
    st.info("No scanned study yet. Run `python -m core scan --train T --val V --synthetic S --out studies/NAME` (see README).")
    st.stop()
study = st.sidebar.selectbox("Study", studies, format_func=lambda p: p.name)
summary = json.loads((study / "summary.json").read_text())
mem, cop = summary["memorized_training_fraction"], summary["copy_fraction"]
cols = st.columns(3)
cols[0].metric("Threshold", f"{summary['threshold']:.3f}", help=f"rule {summary['rule']}, percentile {summary['percentile']}")
cols[1].metric("Memorized training", f"{mem['value']:.1%}", help=f"95% CI {mem['low']:.1%}-{mem['high']:.1%} ({mem['method']})")
cols[2].metric("Synthetic copies", f"{cop['value']:.1%}", help=f"95% CI {cop['low']:.1%}-{cop['high']:.1%} ({cop['method']})")
st.json(summary["counts"])
