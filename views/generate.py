"""Generate: sample an LDM checkpoint as a background job, then preview the samples."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from core.common.config import choices
from core.common.errors import MemoScopeError
from core.generative.conditioning import describe_model
from core.generative.ldm import SchedulerName, list_checkpoints, read_config
from core.io.viewer import gallery
from core.study.store import open_study
from views import _ui

study = _ui.require_study()
inputs = _ui.inputs(study)
st.title("Generate samples")

checkpoints = list_checkpoints(_ui.CHECKPOINTS)
choice = st.selectbox(
    "Checkpoint",
    [*checkpoints, "other path..."],
    index=checkpoints.index(inputs.checkpoint) if inputs.checkpoint in checkpoints else 0,
)
path = st.text_input("Checkpoint folder", value=inputs.checkpoint or "") if choice == "other path..." else choice
config = None
if path:
    try:
        config = read_config(path)
    except MemoScopeError as exc:
        st.error(str(exc))
if config is not None:
    training = config.training
    unknown = "?"
    st.caption(
        f"{config.spatial_dims}D, image {config.image_size}, latent {list(config.latent_shape)}, "
        f"UNet epochs {unknown if training.unet_epochs is None else training.unet_epochs}, augmentation "
        f"{unknown if training.augment is None else training.augment}, seed "
        f"{unknown if training.seed is None else training.seed}"
    )
    for note in training.notes:
        st.info(note, icon=":material/info:")  # the trainer's notes: provenance, not a warning
    with st.expander("ldm.json"):
        st.json(config.to_dict(), expanded=False)

with st.form("generate"):
    cols = st.columns(5)
    n = cols[0].number_input("Samples", 1, 100_000, 16)
    steps = cols[1].number_input("Steps", 1, 1000, 50)
    scheduler = cols[2].selectbox("Scheduler", choices(SchedulerName), index=choices(SchedulerName).index("ddim"))
    seed = cols[3].number_input("Seed", 0, 2**31 - 1, 0)
    batch = cols[4].number_input("Batch size", 0, 4096, 0, help="0: the largest that fits the device")
    compute = _ui.compute_inputs("generate")
    compiled = st.checkbox(
        "Compile the denoiser",
        help="torch.compile, with CUDA graphs on a GPU: the first batch waits a minute or more for the compilation, "
        "every later one runs faster; worth it for thousands of samples. The samples stay the same up to "
        "floating-point differences.",
    )
    # a new folder per run by default, chosen once: a default that changed with the clock would make Streamlit
    # see a new widget on the submitting rerun and drop the folder the user typed
    out_key = f"generate_out::{study}::{path}::{st.session_state.get(f'generate_runs::{study}', 0)}"
    if out_key not in st.session_state:
        folder_name = f"{Path(path or 'ldm').name}-{time.strftime('%Y%m%d-%H%M%S')}"
        st.session_state[out_key] = str(study / "generated" / folder_name)
    out = st.text_input(
        "Output folder",
        key=out_key,
        help="A new folder for each run by default (the study's existing samples stay as they are). Give an "
        "earlier run's folder to resume it: the same checkpoint, seed, steps and scheduler continue where it "
        "stopped; anything else is refused.",
    )
    conditional = config.conditioning if config is not None else {}
    rules, table = "", ""
    if conditional:
        st.markdown(f"**Conditioning**: this LDM takes {describe_model(conditional)}.")
        rules = st.text_area(
            "Values, one per line in the model's order",
            placeholder="gender=0\nage=uniform(0.2,0.9)\nventricular_vol=normal(0.3,0.05)\nbrain_vol=0.4",
            help="NAME=VALUE, NAME=uniform(LOW,HIGH) or NAME=normal(MEAN,SD); drawn per sample from the seed, so "
            "the batch size changes nothing. Or give a CSV below.",
        )
        table = st.text_input("or a CSV with one row per sample (a column per value)", value="")
    submitted = st.form_submit_button("Start generation", disabled=config is None)
if submitted and config is not None:
    options = {
        "checkpoint": path,
        "out": out,
        "n": int(n),
        "steps": int(steps),
        "scheduler": scheduler,
        "seed": int(seed),
        "batch_size": int(batch),
        "compile": bool(compiled),
        **compute,
    }
    if table.strip():
        options["conditioning"] = table.strip()
    if rules.strip():
        options["condition"] = [line.strip() for line in rules.splitlines() if line.strip()]
    if _ui.start(study, "generate", options):
        open_study(study).set_inputs(synthetic=out, checkpoint=path)
        runs = f"generate_runs::{study}"
        st.session_state[runs] = st.session_state.get(runs, 0) + 1  # the next run offers a new folder

_ui.job_panel(study, "generate")

st.subheader("Gallery")
folder = Path(inputs.synthetic or study / "synthetic")
samples = gallery(folder, limit=24)
if not samples.total:
    st.caption("No samples yet.")
else:
    st.caption(f"{samples.total} samples in {_ui.code(folder)} (first {len(samples.thumbnails)}; each windowed 1-99 %)")
    thumbs = st.columns(8)
    for i, (name, png) in enumerate(samples.thumbnails):
        thumbs[i % 8].image(png, caption=name, width="stretch")
