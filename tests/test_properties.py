"""Property-based tests (hypothesis) over configs, manifests and the calibrated metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.common.errors import MemoScopeError
from core.detect.metrics import count_above, empirical_p_values, is_copy, parse_rule, wilson_interval
from core.generative.ldm import SchedulerName
from core.generative.sample import GenerateConfig, ImageFormat, Precision
from core.io.discover import KNOWN_SPLITS, discover_manifest

similarities = st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=60)


@given(
    n=st.integers(1, 10**6),
    steps=st.integers(1, 1000),
    batch=st.integers(1, 4096),
    seed=st.integers(0, 2**31),
    scheduler=st.sampled_from(list(SchedulerName)),
    precision=st.sampled_from(list(Precision)),
    fmt=st.sampled_from(list(ImageFormat)),
)
def test_a_valid_config_round_trips(
    n: int, steps: int, batch: int, seed: int, scheduler: SchedulerName, precision: Precision, fmt: ImageFormat
) -> None:
    config = GenerateConfig("ck", "out", n, steps, scheduler, batch, seed, "auto", precision, fmt)
    assert GenerateConfig.from_dict(config.to_dict()) == config


@given(value=st.one_of(st.integers(-(10**6), 0), st.floats(allow_nan=True)))
def test_a_bad_count_is_always_a_clear_error(value: float) -> None:
    try:
        GenerateConfig.from_dict({"checkpoint": "c", "out": "o", "n": value})
    except MemoScopeError as exc:
        assert "n " in str(exc)
    else:
        assert isinstance(value, float) and value >= 1  # a float count >= 1 is accepted as given


@given(text=st.text(max_size=20))
def test_any_threshold_rule_text_parses_or_is_refused_by_name(text: str) -> None:
    try:
        rule, fixed = parse_rule(text)
    except MemoScopeError as exc:
        assert "--threshold-rule" in str(exc)
    else:
        assert fixed is None or -1.0 <= fixed <= 1.0
        assert rule in ("paper", "heldout", "fixed")


@given(scores=similarities, null=similarities)
def test_p_values_are_valid_and_fall_as_the_score_rises(scores: list[float], null: list[float]) -> None:
    p = empirical_p_values(scores, null)
    assert np.all((p > 0) & (p <= 1))
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(p[order]) <= 1e-12)


@given(values=similarities, tau=st.floats(-1.5, 1.5, allow_nan=False))
def test_the_slider_count_equals_the_copy_rule(values: list[float], tau: float) -> None:
    assert int(count_above(np.sort(values), tau)) == int(is_copy(values, tau).sum())


@given(count=st.integers(0, 500), extra=st.integers(0, 500))
def test_wilson_intervals_hold_the_proportion(count: int, extra: int) -> None:
    total = count + extra
    low, high = wilson_interval(count, total)
    if total == 0:
        assert math.isnan(low) and math.isnan(high)
    else:
        assert 0.0 <= low <= count / total <= high <= 1.0


@settings(max_examples=60, deadline=None)
@given(split=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters='",\r\n'), max_size=12))
def test_a_manifest_split_value_is_known_or_refused_with_its_line(tmp_path_factory, split: str) -> None:  # noqa: ANN001
    folder: Path = tmp_path_factory.mktemp("m")
    (folder / "a.npy").write_bytes(b"")
    manifest = folder / "m.csv"
    manifest.write_text(f"path,patient_id,split\na.npy,P1,{split}\n", encoding="utf-8")
    try:
        records = discover_manifest(manifest)
    except MemoScopeError as exc:
        assert "line 2" in str(exc) and split.strip().lower() not in KNOWN_SPLITS
    else:
        assert records[0].split is None or records[0].split.lower() in KNOWN_SPLITS
