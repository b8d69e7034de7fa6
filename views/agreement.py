"""Agreement: the detector against each reviewer and reviewers against each other; precision and recall by threshold."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.study import verdicts
from core.study.results import nearest_pairs
from core.study.review import threshold_curve
from views import _ui

study = _ui.require_study()
st.title("Agreement")
summary = _ui.require_summary(study)
chosen = _ui.study_threshold(study)
tau = chosen.value
mode = st.radio(
    "Verdicts",
    ("blinded", "open"),
    horizontal=True,
    key="agreement_mode",
    help="blinded: the paper's rater check (no scores shown); open: verdicts given on the work-list",
)
nearest = {(p.synthetic_id, p.train_id): p.similarity for p in nearest_pairs(_ui.pairs(study))}
scan = _ui.scan(study)
by_reviewer = verdicts.by_reviewer(study, mode, scan)
stale = verdicts.stale_decisions(study, scan) if scan else []
if stale:
    st.warning(
        f"{len(stale)} verdicts were given on images this scan no longer compares (another synthetic set or "
        "changed files); they are listed in the audit trail and not counted here."
    )
names = list(by_reviewer)
if not names:
    st.info(f"No {mode} verdicts yet: record some on the Review page.")
    st.stop()
detector = verdicts.detector_calls(nearest, tau)


def show(label: str, result: verdicts.Agreement, row_name: str, col_name: str) -> dict[str, object]:
    (tn, fp), (fn, tp) = result.matrix
    return {
        "comparison": label,
        "pairs": result.n,
        "accuracy": round(result.accuracy, 3) if result.n else None,
        "Cohen's kappa": None if np.isnan(result.kappa) else round(result.kappa, 3),
        f"{row_name} copy / {col_name} copy": tp,
        f"{row_name} copy / {col_name} not": fn,
        f"{row_name} not / {col_name} copy": fp,
        f"{row_name} not / {col_name} not": tn,
        "unsure left out": result.excluded_unsure,
    }


st.subheader(f"Detector (tau {tau:.3f}) against each reviewer")
st.caption(f"Study threshold: {chosen.label}.")
st.dataframe(
    [show(f"detector vs {n}", verdicts.agreement(by_reviewer[n], detector), "reviewer", "detector") for n in names],
    hide_index=True,
)
if len(names) > 1:
    st.subheader("Between reviewers")
    st.dataframe(
        [
            show(f"{a} vs {b}", verdicts.agreement(by_reviewer[a], by_reviewer[b]), a, b)
            for a, b in combinations(names, 2)
        ],
        hide_index=True,
    )

st.subheader("Detector precision and recall against reviewer labels, by threshold")
grid = threshold_curve(_ui.calibration(study))["tau"]
fig = go.Figure()
for name in names:
    keys = [k for k, v in by_reviewer[name].items() if v != "unsure" and k in nearest]
    if not keys:
        continue
    pr = verdicts.precision_recall([nearest[k] for k in keys], [by_reviewer[name][k] == "copy" for k in keys], grid)
    fig.add_scatter(x=pr["tau"], y=pr["precision"], name=f"precision ({name})")
    fig.add_scatter(x=pr["tau"], y=pr["recall"], name=f"recall ({name})", line=dict(dash="dot"))
fig.add_vline(x=tau, line_color="red", annotation_text=f"tau {tau:.3f}")
fig.update_layout(
    xaxis_title="threshold", yaxis_title="fraction", yaxis_range=[0, 1.02], height=340, margin=dict(t=30, b=40)
)
st.plotly_chart(fig, key="pr_curve")
with st.expander("Audit trail (every verdict and what it replaced)"):
    check = verdicts.verify_audit(study)
    if check.ok:
        st.caption(f"Hash chain verified: {check.rows} rows, head `{check.head[:16]}`.")
    else:
        st.error("The audit trail failed verification: " + "; ".join(check.problems[:5]))
    st.dataframe(_ui.shown_rows(study, verdicts.audit_trail(study)), hide_index=True)
