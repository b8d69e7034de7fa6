"""Review: the work-list of synthetic samples by similarity and a side-by-side viewer with the nearest training "
"scans."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import streamlit as st

from core.io.load import ImageSet
from core.io.viewer import (
    CT_PRESETS,
    PERCENTILE_PRESETS,
    PLANES,
    Window,
    apply_window,
    checkerboard,
    crosshair_at,
    difference,
    difference_bar,
    difference_limit,
    flicker_gif,
    orthogonal_slice,
    percentile_window,
    plane_size,
    png_bytes,
    with_crosshair,
)
from core.study import verdicts
from core.study.results import nearest_pairs
from core.study.review import (
    WorklistRow,
    aligned_training,
    blinded_rows,
    display_units,
    group_by_training,
    load_study_set,
    worklist,
)
from views import _ui

study = _ui.require_study()
st.title(f"Review pairs: {study.name}")  # the study the next verdict goes into, named where it is given
summary = _ui.require_summary(study)
chosen = _ui.study_threshold(study)
tau = chosen.value
pairs = _ui.pairs(study)
_ui.show_caveats(study, collapsed=True)


@st.cache_data(max_entries=8, show_spinner="Loading images...")
def images(study_path: str, finished_at: str, role: str) -> ImageSet:  # finished_at: a rescan invalidates
    return load_study_set(summary, role)


def from_url(param: str, key: str, options: Any, default: Any, cast: Any = str) -> None:
    """Start widget ``key`` from the URL's ``param`` when it names one of ``options``, else from ``default`` (a
    reload or a shared link shows the same view). The widget is then drawn without a value of its own."""
    if key in st.session_state and st.session_state[key] in options:
        return
    try:
        value = cast(st.query_params[param]) if param in st.query_params else default
    except ValueError:
        value = default
    st.session_state[key] = value if value in options else default


def to_url(param: str, value: Any) -> None:
    if st.query_params.get(param) != str(value):
        st.query_params[param] = str(value)


NEW_REVIEWER = "+ add a reviewer"


def _use_reviewer(name: str) -> None:
    """Review as ``name`` from now on; kept in the URL, so a reload or a shared link keeps it."""
    st.session_state["reviewer"] = name
    st.query_params["reviewer"] = name


def _add_reviewer() -> None:
    name = st.session_state.get("reviewer_input", "").strip()
    if name:
        _use_reviewer(name)
        st.session_state[f"reviewer_pick::{study}"] = name  # the chooser shows who you are (popping it left the
        # browser's "+ add a reviewer" in place, and the new-name form with it)


if "reviewer" not in st.session_state and st.query_params.get("reviewer"):
    st.session_state["reviewer"] = st.query_params["reviewer"]
reviewer = st.session_state.get("reviewer", "")
with st.sidebar:  # the settings of this review session: the main column is for the images
    st.subheader("Review settings")
    names = sorted(set(verdicts.reviewers(study)) | ({reviewer} if reviewer else set()))
    pick = st.selectbox(
        "Reviewer",
        [*names, NEW_REVIEWER],
        index=names.index(reviewer) if reviewer else None,
        key=f"reviewer_pick::{study}",
        placeholder="choose your name, or add it",
        help="Recorded with every verdict in the study's audit trail; a new name is added only when you confirm it",
    )
    if pick == NEW_REVIEWER:
        with st.form("new_reviewer", border=False):
            st.text_input("New reviewer's name", key="reviewer_input")
            st.form_submit_button("Add and review as this name", on_click=_add_reviewer)
    elif pick and pick != reviewer:
        _use_reviewer(pick)
        reviewer = pick
    from_url("blind", f"blind::{study}", (True, False), False, cast=lambda v: v == "1")  # a reload stays blinded
    blinded = st.toggle(
        "Blinded check",
        key=f"blind::{study}",
        help="A seeded random sample stratified across the similarity range, in random order, without the "
        "similarity or the detector's call (Dar et al.'s rater check)",
    )
    if blinded:
        n_blind = int(st.number_input("Blinded pairs", 10, 1000, 100, key=f"nblind::{study}"))
        blind_seed = int(st.number_input("Sample seed", 0, 2**31 - 1, 0, key=f"bseed::{study}"))
        only_copies = grouped = False
    else:
        only_copies = st.toggle("Only copies (above threshold)", value=True, key=f"only::{study}")
        grouped = st.toggle(
            "One row per training scan",
            value=False,
            key=f"group::{study}",
            help="Several samples copying one training scan are judged once",
        )
        st.caption(f"Study threshold: {chosen.label}. Sorted by similarity, highest first.")
mode = "blinded" if blinded else "open"
if blinded:
    to_url("blind", 1)
else:
    st.query_params.pop("blind", None)
PAIR = "bpair" if blinded else "pair"  # a position in the blinded sample is not one in the open list
scan = _ui.require_scan(study)
mine = {(d.synthetic_id, d.train_id): d for d in verdicts.decisions(study, reviewer, mode, scan)} if reviewer else {}

rows: list[WorklistRow]
if blinded:
    nearest = nearest_pairs(pairs)
    sample = verdicts.blinded_sample(
        [(p.synthetic_id, p.train_id) for p in nearest], [p.similarity for p in nearest], n_blind, blind_seed
    )
    rows = blinded_rows(pairs, sample)
    st.caption(f"Blinded: {len(rows)} pairs (seed {blind_seed}); similarity and the detector's call are hidden.")
else:
    rows = worklist(pairs, tau, only_copies, scan.patient_rows())
    if grouped:
        rows = group_by_training(rows)
if not rows:
    st.info("No samples above the threshold. Switch off 'Only copies' to browse every sample.")
    st.stop()
judged = {r.key: mine[r.key].verdict for r in rows if r.key in mine}  # this reviewer's verdicts in this mode

sel_key = f"sel::{study}::{mode}::{only_copies}::{grouped}::{reviewer}"
if sel_key not in st.session_state:  # the pair in the URL (a reload, a shared link), else where this reviewer left off
    asked = st.query_params.get(PAIR, "")
    st.session_state[sel_key] = (
        int(asked) - 1
        if asked.isdigit() and 1 <= int(asked) <= len(rows)
        else next((i for i, r in enumerate(rows) if r.key not in judged), 0)
    )
# The work list is drawn below the images; its selection (kept by Streamlit under the table's key) is read here.
table_key = f"worklist::{sel_key}"
selected = st.session_state.get(table_key)
picked = selected["selection"]["rows"][0] if selected and selected["selection"]["rows"] else None
if picked is not None and picked != st.session_state.get(f"{sel_key}::picked"):  # a new click in the table wins once
    st.session_state[sel_key] = picked
st.session_state[f"{sel_key}::picked"] = picked
index = min(int(st.session_state.get(sel_key, 0)), len(rows) - 1)
# One toolbar above the images: moving and judging are in the same row, on screen without scrolling at any window
# size (the verdict buttons once sat below nine 3D images, and read "Co...", "No..." at 1024 px).
bar = st.container(horizontal=True, vertical_alignment="center", key="review_bar")
if bar.button("Previous", disabled=index == 0, key="prev", shortcut="k"):
    index -= 1
if bar.button("Next", disabled=index >= len(rows) - 1, key="next", shortcut="j"):
    index += 1
st.session_state[sel_key] = index
to_url(PAIR, index + 1)
row = rows[index]
pair = row.pair
current = mine.get(row.key)
synthetic = images(str(study), summary.finished_at, "synthetic")
train = images(str(study), summary.finished_at, "train")
spec = summary.preprocessing
syn_index = {s: i for i, s in enumerate(synthetic.ids)}
train_index = {s: i for i, s in enumerate(train.ids)}
if pair.synthetic_id not in syn_index or pair.train_id not in train_index:
    st.error("The images of this pair are no longer where the scan found them; rescan the study.")
    st.stop()  # before the verdict buttons: a pair whose images cannot be shown cannot be judged
if reviewer:
    for value in verdicts.Verdict:
        if bar.button(
            f"{value.label} ({value.shortcut})",
            key=f"verdict_{value}",
            shortcut=value.shortcut,
            type="primary" if current is not None and current.verdict == value else "secondary",
            help=f"record '{value.label}' as {reviewer}",
            width="content",
        ):
            note = st.session_state.get(f"note::{sel_key}::{index}", current.note if current else "")
            verdicts.record(study, reviewer, scan.pair_ref(*row.key), value, note, mode)
            st.session_state[sel_key] = min(index + 1, len(rows) - 1)
            st.rerun()
    bar.text_input(
        "Note (optional)",
        key=f"note::{sel_key}::{index}",
        value=current.note if current else "",
        placeholder="Note (optional), saved with the verdict",
        label_visibility="collapsed",
        width=260,
    )
if blinded:
    st.markdown(
        f"**{index + 1} / {len(rows)}**: pair {_ui.code(pair.synthetic_id)} vs "
        f"{_ui.code(_ui.shown_scan(study, pair.train_id))}"
    )
else:
    score = "verified score" if row.verified else "similarity"
    retrieved = f" (embedding {pair.retrieval:.3f})" if pair.retrieval is not None else ""
    scan_name, patient_name = _ui.shown_scan(study, pair.train_id), _ui.shown_patient(study, pair.patient_id)
    st.markdown(
        f"**{index + 1} / {len(rows)}**: {_ui.code(pair.synthetic_id)} vs training {_ui.code(scan_name)} "
        f"(patient {_ui.code(patient_name)}) · {score} **{pair.similarity:.3f}**{retrieved} · "
        f"p-value {pair.p_value:.3g} · "
        f"pixel r {pair.pixel_corr:.3f} · {'**copy**' if row.copy else 'not a copy'} at tau {tau:.3f}"
        + (f" · training scan {pair.alignment.label()} to match" if pair.alignment is not None else "")
    )
done = len(judged)
st.caption(
    f"Recording as **{reviewer}**: {done}/{len(rows)} judged in this list ({mode})"
    + (f"; this pair: {current.verdict} at {current.decided_at}" if current else "")
    if reviewer
    else "Choose or add your name under Review settings in the sidebar to record verdicts."
)
if generated_with := _ui.conditioning_text(study, pair.synthetic_id):
    st.caption(generated_with)

training_image = train.images[train_index[pair.train_id], 0]
if (
    pair.alignment is not None
    and st.sidebar.toggle(  # a setting of the view, beside the others: the main column is for the pair
        "Align the training scan as verified",
        value=True,
        key="align",
        help="Move the training scan by the rotation and shift the verification found, so that the difference "
        "shows what remains after alignment (what the verified score measured).",
    )
):
    training_image = aligned_training(summary, pair, training_image)
a, unit = display_units(synthetic.images[syn_index[pair.synthetic_id], 0], spec)
b, _ = display_units(training_image, spec)


def window_controls(a: np.ndarray, b: np.ndarray) -> Window:
    presets = [*(f"CT {k}" for k in CT_PRESETS)] if unit == "HU" else []
    presets += [f"percentile {k}" for k in PERCENTILE_PRESETS] + ["custom"]
    from_url("window", "window_preset", presets, "percentile 1-99 %")
    choice = st.selectbox("Window", presets, key="window_preset")
    to_url("window", choice)
    if choice.startswith("CT "):
        width, level = CT_PRESETS[choice[3:]]
        return Window(width, level)
    if choice.startswith("percentile "):
        return percentile_window([a, b], *PERCENTILE_PRESETS[choice[len("percentile ") :]])
    base = percentile_window([a, b], 0, 100)
    cols = st.columns(2)
    width = cols[0].number_input(
        f"Width ({unit})", value=float(base.width), min_value=1e-6, format="%.4f", key="w_custom"
    )
    level = cols[1].number_input(f"Level ({unit})", value=float(base.level), format="%.4f", key="l_custom")
    return Window(width, level)


ZOOMS = ("fit", "1x", "2x", "4x", "8x")
MODES = ("side by side", "flicker", "checkerboard")


def view_controls(suffix: str) -> tuple[Window, str, int, bool]:
    """The row shared by both viewers: window, comparison mode, zoom (all kept in the URL).

    Returns the window, the mode, the pixel scale the PNGs are rendered at, and whether the images fill their
    columns (``fit``: as large as the window allows, still nearest-neighbour sharp).
    """
    cols = st.columns([2, 2, 1])
    with cols[0]:
        window = window_controls(a, b)
    from_url("compare", f"compare_mode{suffix}", MODES, MODES[0])
    mode = cols[1].radio("Compare", MODES, horizontal=True, key=f"compare_mode{suffix}")
    from_url("zoom", f"zoom{suffix}", ZOOMS, "fit")
    zoom = cols[2].select_slider("Zoom", ZOOMS, key=f"zoom{suffix}")
    to_url("compare", mode)
    to_url("zoom", zoom)
    fit = zoom == "fit"
    scale = max(1, 512 // max(a.shape[:2])) if fit else int(zoom[:-1])
    return window, mode, scale, fit


def difference_legend(window: Window) -> None:
    """The difference colour bar with its fixed scale (the same for every pair in this window)."""
    limit = difference_limit(window)
    cols = st.columns([2, 1])
    cols[0].caption(window_caption(window))
    cols[1].image(png_bytes(difference_bar(192, 10)), width="stretch")
    cols[1].caption(
        f"difference synthetic - training: blue -{limit:.3g}, white 0, red +{limit:.3g} {unit} (half the window)"
    )


def window_caption(window: Window) -> str:
    return f"Window width {window.width:.4g}, level {window.level:.4g} {unit}, applied to both images."


@st.fragment
def viewer_2d() -> None:
    window, mode, scale, fit = view_controls("")
    width: Literal["stretch", "content"] = "stretch" if fit else "content"
    wa, wb = apply_window(a, window), apply_window(b, window)
    training_caption = f"nearest training {_ui.shown_scan(study, pair.train_id)}"
    # Three columns in every mode, so that the pair is as large in flicker and checkerboard as side by side and
    # stays above the fold (a flicker two columns wide was cut at 900 px).
    c = st.columns(3)
    if mode == "side by side":
        c[0].image(png_bytes(wa, scale), caption=f"synthetic {pair.synthetic_id}", width=width)
        c[1].image(png_bytes(wb, scale), caption=training_caption, width=width)
        c[2].image(png_bytes(difference(a, b, difference_limit(window)), scale), caption="difference", width=width)
        difference_legend(window)
        return
    if mode == "flicker":
        c[0].image(flicker_gif(wa, wb, scale), caption="flicker: synthetic / training, 0.6 s each", width=width)
    else:
        tiles = int(st.session_state.get("tiles", 8))
        c[0].image(
            png_bytes(checkerboard(wa, wb, tiles), scale),
            caption="checkerboard: synthetic and training tiles",
            width=width,
        )
    c[1].image(png_bytes(wa, scale), caption=f"synthetic {pair.synthetic_id}", width=width)
    c[2].image(png_bytes(wb, scale), caption=training_caption, width=width)
    below = st.columns([2, 1])
    below[0].caption(window_caption(window))
    if mode == "checkerboard":
        below[1].slider("Tiles", 2, 16, 8, key="tiles")


ALL_PLANES = "all three"


@st.fragment
def viewer_3d() -> None:
    window, mode, scale, fit = view_controls("_3d")
    width: Literal["stretch", "content"] = "stretch" if fit else "content"
    # One plane by default: the pair (synthetic | training | difference) and the verdict buttons then fit on one
    # screen at 1440x900 (nine images came first once); all three planes, with crosshairs, are one choice away.
    controls = st.columns([1, 3], vertical_alignment="bottom")
    choices = (*PLANES, ALL_PLANES)
    from_url("plane", "plane_3d", choices, PLANES[0])
    chosen_plane = controls[0].selectbox("Plane", choices, key="plane_3d")
    to_url("plane", chosen_plane)
    planes = list(PLANES) if chosen_plane == ALL_PLANES else [chosen_plane]
    sliders = controls[1].columns(len(planes))
    position = {}
    for plane in PLANES:
        n = plane_size(a.shape, plane)
        from_url(plane, f"slice_{plane}", range(n), n // 2, int)
        if plane in planes:
            position[plane] = sliders[planes.index(plane)].slider(f"{plane} slice", 0, n - 1, key=f"slice_{plane}")
            to_url(plane, position[plane])
        else:  # not drawn: where the URL (or the middle) says; no entry left behind that would later outrank the URL
            position[plane] = int(st.session_state.pop(f"slice_{plane}"))
    cross = len(planes) > 1 and st.toggle(
        "Crosshair", value=True, key="crosshair", help="Where the other two planes cut each plane"
    )
    limit = difference_limit(window)
    for plane in planes:
        sa, sb = orthogonal_slice(a, plane, position[plane]), orthogonal_slice(b, plane, position[plane])
        wa, wb = apply_window(sa, window), apply_window(sb, window)
        if mode == "flicker":
            shown = [wa, wb]
        else:
            shown = [wa, wb, difference(sa, sb, limit) if mode == "side by side" else checkerboard(wa, wb)]
        at = crosshair_at(a.shape, plane, position)
        pictures = [png_bytes(with_crosshair(x, *at, scale) if cross else x, 1 if cross else scale) for x in shown]
        captions = [f"synthetic · {plane} {position[plane]}", f"training · {plane} {position[plane]}"]
        c = st.columns(3)
        c[0].image(pictures[0], caption=captions[0], width=width)
        c[1].image(pictures[1], caption=captions[1], width=width)
        if mode == "flicker":
            c[2].image(flicker_gif(wa, wb, scale), caption="flicker: synthetic / training", width=width)
        else:
            c[2].image(pictures[2], caption="difference" if mode == "side by side" else "checkerboard", width=width)
    if mode == "side by side":
        difference_legend(window)
    else:
        st.caption(window_caption(window))


if spec.spatial_dims == 2:
    viewer_2d()
else:
    viewer_3d()

shown = _ui.shown_rows(study, [r.columns(judged.get(r.key, "")) for r in rows])
st.dataframe(
    shown,
    hide_index=True,
    on_select="rerun",
    selection_mode="single-row",
    key=table_key,
    height=260,
)

if blinded:
    st.stop()  # the neighbours show similarities: not in the blinded check
st.subheader("Top training neighbours")
neighbours = sorted((p for p in pairs if p.synthetic_id == pair.synthetic_id), key=lambda p: p.rank)
cols = st.columns(max(len(neighbours), 5))  # one thumbnail size whatever the number of neighbours
for col, p in zip(cols, neighbours, strict=False):
    volume, _ = display_units(train.images[train_index[p.train_id], 0], spec)
    image = orthogonal_slice(volume, "axial", volume.shape[2] // 2) if volume.ndim == 3 else volume
    col.image(
        png_bytes(apply_window(image, percentile_window(image, 1, 99)), 2),
        width="stretch",  # one size for every neighbour (3D volumes of different shapes once differed)
        caption=f"#{p.rank} {_ui.shown_scan(study, p.train_id)} · r {p.similarity:.3f}"
        + (" · copy" if p.is_copy(tau) else ""),
    )
