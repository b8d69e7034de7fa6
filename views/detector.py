"""Detector: train or load the contrastive detector, then embed every set and scan (background jobs)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from core.common.config import choices
from core.common.errors import MemoScopeError
from core.detect.metrics import ThresholdRule
from core.detect.record import Arch, is_detector_folder, read_detector_record
from core.detect.verify import MatchMethod
from core.io.augment import AugmentPolicy
from core.study import results
from core.study.store import open_study, patient_warnings
from views import _ui

study = _ui.require_study()
inputs = _ui.inputs(study)
summary = _ui.summary(study)
st.title("Detector")

spec = summary.preprocessing if summary else None
dims = int(inputs.dims or (spec.spatial_dims if spec else 2))
size = int(inputs.size or (spec.spatial_size[0] if spec else 64))
train, val, synthetic = (inputs.source(role) or (summary.source(role) if summary else None) for role in results.ROLES)
detector = inputs.detector or (summary.detector.path if summary else None)
st.caption(
    f"Training {_ui.code(train)} · validation {_ui.code(val)} · synthetic {_ui.code(synthetic)} · "
    f"{dims}D at {size} per axis"
)
if summary is None:  # after a scan the Overview's caveats say it
    for warning in patient_warnings(inputs):
        st.warning(warning)

folder = detector or str(study / results.DETECTOR)
record = None
if is_detector_folder(folder):
    try:
        record = read_detector_record(folder)
    except MemoScopeError as exc:
        st.error(str(exc))
current = record.config if record is not None else None  # the form starts from the study's detector
archs = list(choices(Arch)) if dims == 2 else [Arch.CONVRES.value, Arch.RESNET18.value, Arch.PIXELS.value]
policies = list(choices(AugmentPolicy))
train_tab, load_tab = st.tabs(["Train a detector", "Use an existing detector"])
with train_tab, st.form("train_detector"):
    fields = st.columns(5)
    arch = fields[0].selectbox(
        "Encoder",
        archs,
        index=archs.index(current.arch) if current and current.arch in archs else 0,
        help="pixels: nothing to train; blurred, downsampled pixels retrieve the nearest training scans and the "
        "verified call's alignment decides (the scan's --detector none, for sets too large to train on).",
    )
    epochs = fields[1].number_input("Epochs (at most)", 1, 1000, current.epochs if current else 100)
    steps = fields[2].number_input(
        "Steps (at most)",
        1,
        1_000_000,
        current.max_steps if current else 1000,
        help="The training budget in optimizer steps: training stops at the epochs or the steps, whichever come "
        "first, or earlier when the validation loss has stopped improving.",
    )
    augmentation = fields[3].selectbox(
        "Augmentation", policies, index=policies.index(current.augmentation if current else "strong")
    )
    seed = fields[4].number_input("Seed", 0, 2**31 - 1, current.seed if current else 0)
    compute = _ui.compute_inputs("train_detector")
    if st.form_submit_button("Train", disabled=not (train and val)):
        out = str(study / results.DETECTOR)
        if _ui.start(
            study,
            "train-detector",
            {
                "train": train,
                "val": val,
                "dims": dims,
                "size": size,
                "slices": inputs.slices,
                "patients": inputs.patients,
                "seed": int(seed),
                "out": out,
                "overwrite": True,
                "overrides": {
                    "arch": arch,
                    "epochs": int(epochs),
                    "max_steps": int(steps),
                    "augmentation": augmentation,
                },
                **compute,
            },
        ):
            open_study(study).set_inputs(detector=out)
with load_tab, st.form("load_detector"):
    path = st.text_input("Detector folder", value=detector or "")
    if st.form_submit_button("Use this detector"):
        if not is_detector_folder(path):
            st.error(f"{path}: not a detector folder (needs its config and weights).")
        else:
            open_study(study).set_inputs(detector=path)
            st.session_state["detector_chosen"] = path
            st.rerun()
if st.session_state.get("detector_chosen") == detector and detector:
    st.success(f"This study now uses the detector in {_ui.code(detector)}; the next scan embeds with it.")
_ui.job_panel(study, "train-detector")

if record is not None:
    history = record.history
    st.subheader("Training and validation loss (NT-Xent)")
    by_step = bool(history) and all("step" in h for h in history)  # detectors trained before step budgets: epochs
    unit = "step" if by_step else "epoch"
    x = [h["step"] if by_step else h["epoch"] + 1 for h in history]
    kept = x[record.best_epoch] if 0 <= record.best_epoch < len(x) else None
    if history:
        fig = go.Figure()
        for key, name in (("train_loss", "training"), ("val_loss", "validation")):
            fig.add_scatter(x=x, y=[h[key] for h in history], mode="lines", name=name)
        if kept is not None:
            fig.add_vline(x=kept, line_dash="dot", annotation_text="kept (best validation)")
        fig.update_layout(xaxis_title=unit, yaxis_title="loss", height=320, margin=dict(t=30, b=40))
        st.plotly_chart(fig, key="loss_curve")
    st.caption(
        f"{_ui.code(record.folder)}: {record.config.arch} -> {record.config.embed_dim}, "
        f"{record.config.augmentation} augmentation, kept the weights of {unit} {kept}"
    )

st.subheader("Embed all sets and scan")
with st.form("scan"):
    cols = st.columns(4)
    method = cols[0].selectbox(
        "Copy call",
        choices(MatchMethod),
        index=choices(MatchMethod).index(MatchMethod.VERIFIED),
        help="verified: the embedding proposes candidates, then each is aligned (rotation, zoom, shift) and the "
        "aligned structure correlation decides. paper: the embedding correlation decides, as in Dar et al.",
    )
    rule = cols[1].selectbox(
        "Threshold rule",
        ("the method's own", *(r for r in choices(ThresholdRule) if r != ThresholdRule.FIXED)),
        help="The method's own: heldout-patient for verified (a bound that a scan of a new patient exceeds 5 % of "
        "the time, allowing for how much validation patients differ), paper for paper.",
    )
    percentile = cols[2].number_input(
        "Percentile", 50.0, 99.9, float((summary.threshold.percentile if summary else None) or 95.0)
    )
    k = cols[3].number_input("Neighbours kept", 1, 50, int(summary.k if summary else 5))
    privacy = st.checkbox(
        "Then run the privacy tests",
        value=True,
        help="When the samples name their checkpoint: could someone holding the weights tell who was in training "
        "(each training and validation scan denoised through the checkpoint at 4 timesteps), and do the samples as "
        "a whole stay closer to training than new scans do. The Overview shows the answers.",
    )
    compute = _ui.compute_inputs("scan")
    ready = bool(train and val and synthetic and record is not None)
    if st.form_submit_button("Embed and scan", disabled=not ready):
        _ui.start(
            study,
            "scan",
            {
                "train": train,
                "val": val,
                "synthetic": synthetic,
                "out": str(study),
                "detector": folder,
                "dims": dims,
                "size": size,
                "slices": inputs.slices,
                "patients": inputs.patients,
                "method": method,
                "threshold_rule": "" if rule == "the method's own" else rule,
                "percentile": float(percentile),
                "k": int(k),
                "privacy": privacy,
                **compute,
            },
        )
if not (synthetic and record is not None):
    st.caption("Needs synthetic samples (Generate) and a detector (above).")
_ui.job_panel(study, "scan")

st.subheader("Self-test: what this detector catches on your data")
st.caption(
    "Plants changed copies of your training scans (noise, blur, intensity, shift, rotation, warp, mixed; two "
    "strength levels) among real scans of half of the validation patients, calibrates on the other half exactly as "
    "the scan did, and measures what the copy call finds. The Overview page and the report show the result."
)
with st.form("selftest"):
    kinds_col, seed_col, _ = st.columns(3)
    per_kind = kinds_col.number_input("Copies per change and level", 1, 100, 10)
    seed = seed_col.number_input("Seed", 0, 2**31 - 1, 0)
    compute = _ui.compute_inputs("selftest")
    if st.form_submit_button("Run the self-test", disabled=summary is None):
        _ui.start(study, "selftest", {"study": str(study), "per_kind": int(per_kind), "seed": int(seed), **compute})
if summary is None:
    st.caption("Needs a scan first (above).")
_ui.job_panel(study, "selftest")
