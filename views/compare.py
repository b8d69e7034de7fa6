"""Compare: scanned studies side by side (training length, augmentation, both fractions with intervals)."""

from __future__ import annotations

import streamlit as st

from core.study.compare import augmentation_sentence, fractions_by_epochs, threshold_note
from core.study.review import ANATOMY_FLOOR
from views import _ui

st.title("Compare studies")
names = _ui.scanned_studies()
if not names:
    st.info("No scanned study yet: scan one first (Detector page).")
    st.stop()
current = _ui.current_study()
dims = _ui.study_dims(current.name) if current is not None and current.name in names else 2  # compare like with like
chosen = st.multiselect(
    "Studies",
    names,
    default=[n for n in names if _ui.study_dims(n) == dims],
    help="Each at its study threshold (saved on Calibrate, or the scan's own), as its Overview shows it",
)
if not chosen:
    st.info("Choose at least one study.")
    st.stop()
rows = _ui.compare_rows(tuple(chosen))
if sentence := augmentation_sentence(rows):
    st.markdown(f"**Does augmentation reduce memorization here?** {sentence}")
if note := threshold_note(rows):
    st.warning(note)
st.dataframe([r.table_row() for r in rows], hide_index=True)
st.markdown(
    "**Beyond copies:** could someone holding the weights tell who was in training, and do the samples "
    "as a whole stay closer to training than new scans do?"
)
st.dataframe([{"study": r.study, **r.privacy_columns()} for r in rows], hide_index=True)
st.caption(
    "Fractions: value [95 % interval]. Expected FPR: the share of real held-out scans the threshold calls copies. "
    "Unseen-patient FPR: the same for patients the threshold was not calibrated on (verified scans). Copies and "
    "patient resemblance are separate findings. Studies scanned with different copy calls or thresholds are not "
    "directly comparable: check the 'copy call' and 'threshold' columns. Sample quality: the median pixel "
    f"correlation of each sample with its nearest training scan; below {ANATOMY_FLOOR} the samples are not scans yet, "
    "and that stage's memorization numbers say nothing about copying. Nearer than any held-out scan: samples whose "
    "best score against training exceeds every real held-out scan's; samples as new as new patients' scans would "
    "give about the share after 'new:' (1 / (held-out scans + 1)), so a stage far above it reproduces training "
    "anatomy even where nothing is called a copy. Membership AUROC: how well someone holding the checkpoint tells "
    "its training patients from held-out ones by denoising error (0.50: this test cannot, a stronger attack might; "
    "p from permuting the patients' labels; a 95 % interval over patients from 10 patients a side). C_T: "
    "near 0 when samples are as far from training as new patients' scans, strongly negative (below -3) when they sit "
    "closer. Nearest a training scan: about 50 % for samples as new as held-out scans. The Overview says what each "
    "can and cannot show; 'not run': `python -m core privacy --study ...` or the Overview's button."
)
poor = [r.study for r in rows if r.too_poor_to_judge]
if poor:
    st.warning(
        f"Too poor to judge: {', '.join(poor)}. Their samples do not look like scans yet, so a low copy fraction "
        "there means the model cannot make anatomy, not that it does not copy."
    )
if any(r.unet_epochs is not None for r in rows):
    st.plotly_chart(fractions_by_epochs(rows), config={"displayModeBar": False})
    if poor:
        st.caption(f"Left out of the plot (too poor to judge, not a result of 0 %): {', '.join(poor)}.")
else:
    st.caption("No training length is recorded in these studies' checkpoints, so there is no plot against epochs.")
