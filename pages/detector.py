"""Detector: train or load the contrastive detector, then embed every set and scan (background jobs)."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core.detect.detector import CONFIG_NAME
from core.study.store import open_study
from pages import _ui

study = _ui.require_study()
inputs = _ui.inputs(study)
summary = _ui.summary(study)
st.title("Detector")

spec = (summary or {}).get("preprocessing", {})
dims = int(inputs.get("dims") or len(spec.get("spatial_size", [0, 0])))
size = int(inputs.get("size") or (spec.get("spatial_size") or [64])[0])
train = inputs.get("train") or (summary or {}).get("inputs", {}).get("train", {}).get("source")
val = inputs.get("val") or (summary or {}).get("inputs", {}).get("val", {}).get("source")
synthetic = inputs.get("synthetic") or (summary or {}).get("inputs", {}).get("synthetic", {}).get("source")
detector = inputs.get("detector") or ((summary or {}).get("detector") or {}).get("path")
st.caption(f"Training `{train}` · validation `{val}` · synthetic `{synthetic}` · {dims}D at {size} per axis")

train_tab, load_tab = st.tabs(["Train a detector", "Use an existing detector"])
with train_tab, st.form("train_detector"):
    cols = st.columns(4)
    arch = cols[0].selectbox("Encoder", ("resnet18", "convres", "resnet50") if dims == 2 else ("convres", "resnet18"))
    epochs = cols[1].number_input("Epochs", 1, 1000, 100)
    augmentation = cols[2].selectbox("Augmentation", ("strong", "paper"))
    seed = cols[3].number_input("Seed", 0, 2**31 - 1, 0)
    if st.form_submit_button("Train", disabled=not (train and val)):
        out = str(study / "detector")
        _ui.start(study, "train-detector", {"train": train, "val": val, "dims": dims, "size": size, "slices": inputs.get("slices"),
                                            "arch": arch, "epochs": int(epochs), "augmentation": augmentation, "seed": int(seed), "out": out})
        open_study(study).set_inputs({"detector": out})
with load_tab, st.form("load_detector"):
    path = st.text_input("Detector folder", value=detector or "")
    if st.form_submit_button("Use this detector"):
        if not (Path(path) / CONFIG_NAME).is_file():
            st.error(f"{path}: not a detector folder (no {CONFIG_NAME}).")
        else:
            open_study(study).set_inputs({"detector": path})
            st.rerun()
_ui.job_panel(study, "train-detector")

record_path = Path(detector or study / "detector") / CONFIG_NAME
if record_path.is_file():
    record = json.loads(record_path.read_text())
    history = record.get("history", [])
    st.subheader("Training and validation loss (NT-Xent)")
    if history:
        fig = go.Figure()
        for key, name in (("train_loss", "training"), ("val_loss", "validation")):
            fig.add_scatter(x=[h["epoch"] + 1 for h in history], y=[h[key] for h in history], mode="lines", name=name)
        fig.add_vline(x=record["best_epoch"] + 1, line_dash="dot", annotation_text="kept (best validation)")
        fig.update_layout(xaxis_title="epoch", yaxis_title="loss", height=320, margin=dict(t=30, b=40))
        st.plotly_chart(fig, key="loss_curve")
    st.caption(f"`{record_path.parent}`: {record['config']['arch']} -> {record['config']['embed_dim']}, "
               f"{record['config']['augmentation']} augmentation, best epoch {record['best_epoch'] + 1}")

st.subheader("Embed all sets and scan")
with st.form("scan"):
    cols = st.columns(3)
    rule = cols[0].selectbox("Threshold rule", ("paper", "heldout"))
    percentile = cols[1].number_input("Percentile", 50.0, 99.9, float((summary or {}).get("percentile") or 95.0))
    k = cols[2].number_input("Neighbours kept", 1, 50, int((summary or {}).get("k") or 5))
    ready = bool(train and val and synthetic and record_path.is_file())
    if st.form_submit_button("Embed and scan", disabled=not ready):
        _ui.start(study, "scan", {"train": train, "val": val, "synthetic": synthetic, "out": str(study), "detector": str(record_path.parent),
                                  "dims": dims, "size": size, "slices": inputs.get("slices"), "threshold_rule": rule,
                                  "percentile": float(percentile), "k": int(k)})
if not (synthetic and record_path.is_file()):
    st.caption("Needs synthetic samples (Generate) and a detector (above).")
_ui.job_panel(study, "scan")
