"""Review: the work-list of synthetic samples by similarity and a side-by-side viewer with the nearest training scans."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from core.data import ImageSet
from core.review import display_units, group_by_training, load_study_set, study_spec, worklist
from core.viewer import (
    CT_PRESETS,
    PERCENTILE_PRESETS,
    PLANES,
    Window,
    apply_window,
    checkerboard,
    difference,
    flicker_gif,
    orthogonal_slice,
    percentile_window,
    plane_size,
    png_bytes,
)
from pages import _ui

study = _ui.require_study()
summary = _ui.summary(study)
st.title("Review pairs")
if summary is None:
    st.info("Scan the study first (Detector page: Embed and scan).")
    st.stop()
tau = _ui.current_threshold(study, summary["threshold"])
pairs = _ui.pairs(study)


@st.cache_data(max_entries=8, show_spinner="Loading images...")
def images(study_path: str, finished_at: str, role: str) -> ImageSet:  # finished_at: a rescan invalidates
    return load_study_set(summary, role)


cols = st.columns([1, 1, 2])
only_copies = cols[0].toggle("Only copies (above threshold)", value=True, key=f"only::{study}")
grouped = cols[1].toggle("One row per training scan", value=False, key=f"group::{study}",
                         help="Several samples copying one training scan are judged once")
cols[2].caption(f"Threshold {tau:.3f} (set on Calibrate). Sorted by similarity, highest first.")
rows = worklist(pairs, tau, only_copies)
if grouped:
    rows = group_by_training(rows)
if not rows:
    st.info("No samples above the threshold. Switch off 'Only copies' to browse every sample.")
    st.stop()

sel_key = f"sel::{study}::{only_copies}::{grouped}"
event = st.dataframe(rows, hide_index=True, on_select="rerun", selection_mode="single-row", key=f"worklist::{sel_key}", height=260)
picked = event.selection.rows[0] if event.selection.rows else None
if picked is not None and picked != st.session_state.get(f"{sel_key}::picked"):  # a new click in the table wins once
    st.session_state[sel_key] = picked
st.session_state[f"{sel_key}::picked"] = picked
index = min(int(st.session_state.get(sel_key, 0)), len(rows) - 1)
nav = st.columns([1, 1, 6])
if nav[0].button("Previous", disabled=index == 0, key="prev"):
    index -= 1
if nav[1].button("Next", disabled=index >= len(rows) - 1, key="next"):
    index += 1
st.session_state[sel_key] = index
row: dict[str, Any] = rows[index]
nav[2].markdown(f"**{index + 1} / {len(rows)}**: `{row['synthetic_id']}` vs training `{row['train_id']}` (patient "
                f"`{row['patient_id']}`) · similarity **{row['similarity']:.3f}** · p-value {row['p_value']:.3g} · "
                f"pixel r {row['pixel_corr']:.3f} · {'**copy**' if row['copy'] else 'not a copy'} at tau {tau:.3f}")

synthetic = images(str(study), summary["finished_at"], "synthetic")
train = images(str(study), summary["finished_at"], "train")
spec = study_spec(summary)
syn_index = {s: i for i, s in enumerate(synthetic.ids)}
train_index = {s: i for i, s in enumerate(train.ids)}
if row["synthetic_id"] not in syn_index or row["train_id"] not in train_index:
    st.error("The images of this pair are no longer where the scan found them; rescan the study.")
    st.stop()
a, unit = display_units(synthetic.images[syn_index[row["synthetic_id"]], 0], spec)
b, _ = display_units(train.images[train_index[row["train_id"]], 0], spec)


def window_controls(a: np.ndarray, b: np.ndarray) -> Window:
    presets = [*(f"CT {k}" for k in CT_PRESETS)] if unit == "HU" else []
    presets += [f"percentile {k}" for k in PERCENTILE_PRESETS] + ["custom"]
    choice = st.selectbox("Window", presets, index=presets.index("percentile 1-99 %"), key="window_preset")
    if choice.startswith("CT "):
        width, level = CT_PRESETS[choice[3:]]
        return Window(width, level)
    if choice.startswith("percentile "):
        return percentile_window([a, b], *PERCENTILE_PRESETS[choice[len("percentile "):]])
    base = percentile_window([a, b], 0, 100)
    cols = st.columns(2)
    width = cols[0].number_input(f"Width ({unit})", value=float(base.width), min_value=1e-6, format="%.4f", key="w_custom")
    level = cols[1].number_input(f"Level ({unit})", value=float(base.level), format="%.4f", key="l_custom")
    return Window(width, level)


@st.fragment
def viewer_2d() -> None:
    cols = st.columns([2, 2, 1])
    with cols[0]:
        window = window_controls(a, b)
    mode = cols[1].radio("Compare", ("side by side", "flicker", "checkerboard"), horizontal=True, key="compare_mode")
    scale = cols[2].select_slider("Zoom", (1, 2, 4, 6, 8), value=4, key="zoom")
    wa, wb = apply_window(a, window), apply_window(b, window)
    st.caption(f"Window width {window.width:.4g}, level {window.level:.4g} {unit}, applied to both images.")
    if mode == "side by side":
        c = st.columns(3)
        c[0].image(png_bytes(wa, scale), caption=f"synthetic {row['synthetic_id']}")
        c[1].image(png_bytes(wb, scale), caption=f"nearest training {row['train_id']}")
        c[2].image(png_bytes(difference(a, b), scale), caption="difference (synthetic - training; grey = 0)")
    elif mode == "flicker":
        st.image(flicker_gif(wa, wb, scale), caption="flicker: synthetic / training, 0.6 s each")
    else:
        tiles = st.slider("Tiles", 2, 16, 8, key="tiles")
        st.image(png_bytes(checkerboard(wa, wb, tiles), scale), caption="checkerboard: synthetic and training tiles")


@st.fragment
def viewer_3d() -> None:
    cols = st.columns([2, 2, 1])
    with cols[0]:
        window = window_controls(a, b)
    mode = cols[1].radio("Compare", ("side by side", "flicker", "checkerboard"), horizontal=True, key="compare_mode_3d")
    scale = cols[2].select_slider("Zoom", (1, 2, 4, 6, 8), value=4, key="zoom3d")
    sliders = st.columns(3)
    position = {plane: sliders[i].slider(f"{plane} slice", 0, plane_size(a.shape, plane) - 1, plane_size(a.shape, plane) // 2, key=f"slice_{plane}")
                for i, plane in enumerate(PLANES)}
    st.caption(f"One slice position for both volumes; window width {window.width:.4g}, level {window.level:.4g} {unit}.")
    for plane in PLANES:
        sa, sb = orthogonal_slice(a, plane, position[plane]), orthogonal_slice(b, plane, position[plane])
        wa, wb = apply_window(sa, window), apply_window(sb, window)
        c = st.columns(3)
        c[0].image(png_bytes(wa, scale), caption=f"synthetic · {plane} {position[plane]}")
        c[1].image(png_bytes(wb, scale), caption=f"training · {plane} {position[plane]}")
        if mode == "flicker":
            c[2].image(flicker_gif(wa, wb, scale), caption="flicker: synthetic / training")
        else:
            overlay = difference(sa, sb) if mode == "side by side" else checkerboard(wa, wb)
            c[2].image(png_bytes(overlay, scale), caption="difference" if mode == "side by side" else "checkerboard")


if spec.spatial_dims == 2:
    viewer_2d()
else:
    viewer_3d()

st.subheader("Top training neighbours")
neighbours = sorted((p for p in pairs if p.synthetic_id == row["synthetic_id"]), key=lambda p: p.rank)
cols = st.columns(max(len(neighbours), 1))
for col, p in zip(cols, neighbours, strict=False):
    image, _ = display_units(train.images[train_index[p.train_id], 0], spec)
    if image.ndim == 3:
        image = orthogonal_slice(image, "axial", image.shape[2] // 2)
    col.image(png_bytes(apply_window(image, percentile_window(image, 1, 99)), 2),
              caption=f"#{p.rank} {p.train_id} · r {p.similarity:.3f}" + (" · copy" if p.similarity > tau else ""))
