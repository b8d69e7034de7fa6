"""MemoScope app entry: opens a study folder and shows its scan summary (the full review app is its own issue)."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

DEFAULT_STUDY = "demo-2d"  # built by `make demo`, committed, opened first

st.set_page_config(page_title="MemoScope", layout="wide")
st.title("MemoScope")
st.caption("Find patient-data copies among the samples of a latent diffusion model.")


@st.cache_data(max_entries=64)
def read_summary(path: str, mtime: float) -> dict:  # mtime: a rescan invalidates the cache
    return json.loads(Path(path).read_text())


studies = sorted(p.parent for p in Path("studies").glob("*/summary.json"))
if not studies:
    st.info("No scanned study yet. Run `make demo` to build the demo, or `python -m core scan --train T --val V "
            "--synthetic S --out studies/NAME` (see README).")
    st.stop()
summaries = {p: read_summary(str(p / "summary.json"), (p / "summary.json").stat().st_mtime) for p in studies}
default = next((i for i, p in enumerate(studies) if p.name == DEFAULT_STUDY), 0)
study = st.sidebar.selectbox("Study", studies, index=default, format_func=lambda p: p.name)
summary = summaries[study]
mem, cop = summary["memorized_training_fraction"], summary["copy_fraction"]
st.subheader(study.name)
st.caption(f"checkpoint `{summary.get('checkpoint')}` · detector `{summary['detector']['path']}` · "
           f"{summary['counts']['train']} training, {summary['counts']['val']} validation, {summary['counts']['synthetic']} synthetic")
cols = st.columns(4)
cols[0].metric("Threshold", f"{summary['threshold']:.3f}", help=f"rule {summary['rule']}, percentile {summary['percentile']}")
cols[1].metric("Memorized training", f"{mem['value']:.1%}", help=f"95% CI {mem['low']:.1%}-{mem['high']:.1%} ({mem['method']})")
cols[2].metric("Synthetic copies", f"{cop['value']:.1%}", help=f"95% CI {cop['low']:.1%}-{cop['high']:.1%} ({cop['method']})")
cols[3].metric("Expected FPR (copy)", f"{summary['expected_false_positive_rate']['copy']:.1%}",
               help="share of real held-out scans above the threshold")

st.subheader("All studies")
st.dataframe(
    [
        {
            "study": p.name,
            "checkpoint": Path(str(s.get("checkpoint") or "")).name,
            "threshold": round(s["threshold"], 3),
            "memorized training": f"{s['memorized_training_fraction']['value']:.1%} "
                                  f"({s['memorized_training_fraction']['low']:.1%}-{s['memorized_training_fraction']['high']:.1%})",
            "copies": f"{s['copy_fraction']['value']:.1%} ({s['copy_fraction']['low']:.1%}-{s['copy_fraction']['high']:.1%})",
            "synthetic": s["counts"]["synthetic"],
        }
        for p, s in summaries.items()
    ],
    hide_index=True,
)
if Path("docs/FINDINGS.md").is_file():
    st.caption("What the demo shows about over-training and augmentation: docs/FINDINGS.md")
