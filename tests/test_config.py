"""The config base: JSON round trip, unknown keys refused by name, ranges validated, one path from flat options."""

from __future__ import annotations

import json

import pytest

from core.common.config import choices
from core.common.errors import MemoScopeError
from core.detect.detector import DetectorConfig
from core.generative.sample import GenerateConfig, ImageFormat
from core.io.preprocessing import IntensityRule, PreprocessSpec, config_from_options
from core.study.scan import ScanConfig


def test_configs_round_trip_through_json() -> None:
    scan = config_from_options(
        ScanConfig,
        {
            "train": "t",
            "val": "v",
            "synthetic": "s",
            "out": "o",
            "dims": 3,
            "size": 16,
            "intensity": "ct",
            "ct_window": [-100, 300],
            "k": 7,
        },
    )
    again = ScanConfig.from_dict(json.loads(json.dumps(scan.to_dict())))
    assert again == scan and again.spec.intensity is IntensityRule.CT and again.spec.ct_window == (-100.0, 300.0)
    assert again.spec.spatial_size == (16, 16, 16)
    generate = GenerateConfig(checkpoint="c", out="o", n=3, format="npy")
    assert generate.format is ImageFormat.NPY and GenerateConfig.from_dict(generate.to_dict()) == generate


def test_unknown_keys_are_refused_by_name() -> None:
    with pytest.raises(MemoScopeError, match=r"unknown field\(s\) \['epochz'\]"):
        DetectorConfig.from_dict({"spatial_dims": 2, "image_size": [64, 64], "epochz": 3})
    with pytest.raises(MemoScopeError, match=r"missing field\(s\) \['n'\]"):
        GenerateConfig.from_dict({"checkpoint": "c", "out": "o"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n": 0}, "n 0 must be in"),
        ({"n": 1, "scheduler": "euler"}, "scheduler 'euler' must be one of ddpm, ddim"),
        ({"n": 1, "batch_size": -2}, "batch_size -2"),
    ],
)
def test_values_are_validated_on_construction(options: dict, message: str) -> None:
    with pytest.raises(MemoScopeError, match=message):
        GenerateConfig.from_dict({"checkpoint": "c", "out": "o", **options})


def test_scan_config_checks_rule_percentile_and_slices() -> None:
    base = {"train": "t", "val": "v", "synthetic": "s", "out": "o"}
    with pytest.raises(MemoScopeError, match="fixed:X"):
        config_from_options(ScanConfig, {**base, "threshold_rule": "fixed:2"})
    with pytest.raises(MemoScopeError, match="percentile 120"):
        config_from_options(ScanConfig, {**base, "percentile": 120})
    with pytest.raises(MemoScopeError, match="--dims 2"):
        config_from_options(ScanConfig, {**base, "dims": 3, "slices": "axial"})


def test_option_sets_give_the_cli_its_choices() -> None:
    assert choices(IntensityRule) == ("minmax", "ct", "percentile")
    assert PreprocessSpec.from_options({"dims": 2}).resize == "resize"  # StrEnum members equal their strings
