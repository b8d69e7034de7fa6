"""Calibrate: the null and synthetic correlation distributions, the threshold rule, live counts."""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from core.common.config import choices
from core.common.errors import MemoScopeError
from core.detect.metrics import Threshold, ThresholdRule, rule_help
from core.study import verdicts
from core.study.caveats import calibration_caveats
from core.study.review import calibration_figure
from views import _ui

study = _ui.require_study()
st.title("Calibrate the threshold")
summary = _ui.require_summary(study)
cal = _ui.calibration(study)
saved = _ui.study_threshold(study)
st.caption(f"Study threshold: {saved.label}. Review, Agreement, the report and the release use it.")


def save_form(rule: str, percentile: float | None, tau: float) -> None:
    """Save the slider's threshold as the study's (who and when are recorded; earlier choices stay in the history)."""
    if abs(tau - saved.value) < 1e-12 and rule == saved.rule:
        return
    cols = st.columns([2, 3, 2], vertical_alignment="bottom")
    reviewer = cols[0].text_input("Your name", value=st.session_state.get("reviewer", ""), key=f"save_by::{study}")
    note = cols[1].text_input("Why (optional)", key=f"save_note::{study}")
    if cols[2].button(
        f"Save {tau:.3f}", key="save_threshold", type="primary", help="Make this the study threshold", width="stretch"
    ):
        try:
            verdicts.save_threshold(
                study,
                reviewer,
                _ui.require_scan(study),
                Threshold(ThresholdRule(rule), percentile, float(tau), 0),
                note,
            )
        except MemoScopeError as exc:
            st.error(str(exc))
        else:
            st.session_state["reviewer"] = reviewer.strip()
            st.rerun(scope="app")


RULE, PCT, FIXED = f"rule::{study}", f"pct::{study}", f"fixed::{study}"


def _set(key: str, value: object) -> None:
    """A control's value and its copy: Streamlit forgets a widget's value in a run that does not draw it (the
    percentile slider while the rule is fixed), so each slider starts from the copy when drawn again."""
    st.session_state[key] = st.session_state[f"{key}::kept"] = value


def _restore(key: str) -> None:
    if key not in st.session_state and f"{key}::kept" in st.session_state:
        st.session_state[key] = st.session_state[f"{key}::kept"]


def show_threshold(rule: str, percentile: float | None, value: float) -> None:
    """Put the controls at a threshold (widget callback: runs before the widgets are drawn again)."""
    _set(RULE, str(rule))
    _set(PCT, float(percentile or summary.threshold.percentile or 95.0))
    _set(FIXED, float(value))


if RULE not in st.session_state:  # entering the page: the controls start at the study threshold
    show_threshold(saved.rule, saved.percentile, saved.value)


def reset_buttons(rule: str, tau: float) -> None:
    """Ways back after trying other thresholds: the one the scan computed, and the study's saved one where that
    differs. They only move the controls."""
    scanned = summary.threshold
    targets: dict[str, Threshold | verdicts.StudyThreshold] = {"Reset to the scan's threshold": scanned}
    if str(saved.rule) != str(scanned.rule) or abs(saved.value - scanned.value) > 1e-12:
        targets["Back to the saved threshold"] = saved
    row = st.container(horizontal=True)
    for label, target in targets.items():
        how = f"{target.rule}" + (
            f" at the {target.percentile:g}th percentile" if target.percentile is not None else ""
        )
        row.button(
            f"{label} ({target.value:.3f})",
            disabled=str(target.rule) == rule and abs(target.value - tau) < 1e-12,
            on_click=show_threshold,
            args=(target.rule, target.percentile, target.value),
            key=f"reset::{label}",
            help=f"{how}. Only moves the controls; Save makes a threshold the study's.",
        )


@st.fragment
def controls() -> None:
    rule_col, value_col = st.columns([1, 2])
    for key in (RULE, PCT, FIXED):
        _restore(key)
    rule = rule_col.radio(
        "Rule",
        choices(ThresholdRule),
        horizontal=True,
        key=RULE,
        help=rule_help(),  # every rule and what it does, from the rules table
    )
    st.session_state[f"{RULE}::kept"] = rule
    if rule == "fixed":
        tau = value_col.slider("Threshold", -1.0, 1.0, step=0.001, key=FIXED)
        st.session_state[f"{FIXED}::kept"] = tau
        percentile = None
        note = "fixed by hand"
    else:
        percentile = value_col.slider("Percentile", 50.0, 99.9, step=0.1, key=PCT)
        st.session_state[f"{PCT}::kept"] = percentile
        try:
            tau = cal.threshold(rule, percentile).value
        except MemoScopeError as exc:
            st.error(str(exc))
            reset_buttons(rule, math.nan)  # a way back from a rule this study cannot use
            return
        note = f"{rule} rule at the {percentile:g}th percentile"
    save_form(rule, percentile, tau)
    reset_buttons(rule, tau)
    at = _ui.metrics(study, tau, rule, percentile)  # the intervals the Overview, Compare and the report show
    mem, cop = at.memorized, at.copies
    cols = st.columns(4)
    cols[0].metric("Threshold", f"{tau:.3f}", help=note)
    cols[1].metric(
        "Memorized",
        f"{mem.value:.1%}",
        help=f"training scans with a synthetic copy: {mem.count}/{mem.total}; 95 % CI {mem.low:.1%} to "
        f"{mem.high:.1%} ({mem.method})",
    )
    cols[2].metric(
        "Copies",
        f"{cop.value:.1%}",
        help=f"synthetic samples that copy a training scan: {cop.count}/{cop.total}; 95 % CI {cop.low:.1%} to "
        f"{cop.high:.1%} ({cop.method})",
    )
    cols[3].metric(
        "Expected FPR",
        f"{at.expected_fpr_copy:.1%}",
        help="expected false-positive rate: real held-out scans above tau; memorization FPR "
        f"{at.expected_fpr_memorized:.1%}",
    )
    st.caption(
        f"Memorized training {mem.value:.1%} ({mem.count}/{mem.total}; 95 % CI {mem.low:.1%} to {mem.high:.1%}, "
        f"{mem.method}); copies {cop.value:.1%} ({cop.count}/{cop.total}; 95 % CI {cop.low:.1%} to {cop.high:.1%}, "
        f"{cop.method}). The same interval methods as the Overview, Compare and the report; each holds the "
        "threshold fixed."
    )

    diagnosis = _ui.diagnostics(study, tau)
    st.plotly_chart(calibration_figure(cal, tau, str(summary.method), diagnosis.gap_tau), key="calibration")
    st.markdown(diagnosis.describe().replace("Second opinion:", "**Second opinion:**", 1))
    for caveat in calibration_caveats(diagnosis):
        st.warning(caveat.text)
    st.caption(
        f"Null sizes: {len(cal.train_to_val)} training and {len(cal.val_to_train)} validation samples; "
        f"median synthetic->training {float(np.median(cal.synthetic_to_train)):.3f}."
    )


controls()
