"""Overview: the open study at a glance and what is still to be done."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from core.study import jobs
from pages import _ui

study = _ui.require_study()
inputs = _ui.inputs(study)
summary = _ui.summary(study)
st.title(f"Study: {study.name}")

if summary is None:
    st.info("Not scanned yet: no memorization numbers until the detector has embedded the sets.")
else:
    mem, cop = summary["memorized_training_fraction"], summary["copy_fraction"]
    pct = f", percentile {summary['percentile']:g}" if summary.get("percentile") is not None else ""
    cols = st.columns(4)
    cols[0].metric("Threshold", f"{summary['threshold']:.3f}", help=f"rule {summary['rule']}{pct}")
    cols[1].metric("Memorized training", f"{mem['value']:.1%}",
                   help=f"{mem['count']}/{mem['total']}; 95 % CI {mem['low']:.1%} to {mem['high']:.1%} ({mem['method']})")
    cols[2].metric("Synthetic copies", f"{cop['value']:.1%}",
                   help=f"{cop['count']}/{cop['total']}; 95 % CI {cop['low']:.1%} to {cop['high']:.1%} ({cop['method']})")
    cols[3].metric("Expected FPR (copy)", f"{summary['expected_false_positive_rate']['copy']:.1%}",
                   help="share of real held-out scans the threshold would call copies")
    st.caption(f"Memorized training {mem['value']:.1%} (95 % CI {mem['low']:.1%} to {mem['high']:.1%}); copies "
               f"{cop['value']:.1%} (95 % CI {cop['low']:.1%} to {cop['high']:.1%}). Intervals resample samples with "
               "the threshold held fixed.")

st.subheader("Data and models")
sets = summary["inputs"] if summary else {}
rows = []
for role in ("train", "val", "synthetic"):
    info = sets.get(role, {})
    rows.append({"set": role, "source": str(info.get("source") or inputs.get(role) or "not set"),
                 "images": info.get("n"), "patients": info.get("n_patients"), "content hash": (info.get("content_hash") or "")[:12]})
st.dataframe(rows, hide_index=True)
checkpoint = (summary or {}).get("checkpoint") or inputs.get("checkpoint")
detector = (summary or {}).get("detector", {})
st.markdown(f"- LDM checkpoint: `{checkpoint or 'none (synthetic images brought in)'}`"
            + (f", hash `{str(summary.get('checkpoint_hash'))[:12]}`" if summary and summary.get("checkpoint_hash") else ""))
st.markdown(f"- Detector: `{detector.get('path') or inputs.get('detector') or 'not trained yet'}`"
            + (f", {detector['config']['arch']}, hash `{detector['hash'][:12]}`" if detector else ""))
if summary:
    st.markdown(f"- Preprocessing: `{summary['preprocessing']}`; scanned {summary['finished_at']} with MemoScope "
                f"{summary['versions'].get('memoscope', '?')}, torch {summary['versions'].get('torch', '?')}")

st.subheader("To do")
synthetic = inputs.get("synthetic") or (sets.get("synthetic") or {}).get("source")
todo = []
if not synthetic or not Path(synthetic).exists():
    todo.append(("No synthetic samples yet.", "pages/generate.py", "Generate samples"))
if not (detector or inputs.get("detector") or (study / "detector" / "detector.json").is_file()):
    todo.append(("No detector yet.", "pages/detector.py", "Train or load a detector"))
if summary is None:
    todo.append(("Not embedded and scanned yet.", "pages/detector.py", "Embed and scan"))
else:
    todo.append(("Check the threshold against the null distributions.", "pages/calibrate.py", "Calibrate"))
    todo.append((f"Review the {summary['counts']['copies']} flagged copies.", "pages/review.py", "Review pairs"))
for text, page, label in todo:
    cols = st.columns([3, 1])
    cols[0].write(text)
    cols[1].page_link(page, label=label)
running = jobs.active_job(study)
if running:
    st.info(f"A {running.kind} job is running ({running.fraction:.0%}); its page shows the progress.")
