"""Conditional LDMs (issue 14): values per sample from a CSV or stated distributions, recorded with each sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.common.errors import MemoScopeError
from core.common.tables import read_csv
from core.generative.conditioning import conditioning_values, parse_rules
from core.generative.ldm import LDMConfig, build_autoencoder, build_unet, load_ldm, save_ldm
from core.generative.sample import GenerateConfig, generate, sample, sample_seed


@pytest.fixture(scope="module")
def conditional_ldm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2D LDM conditioned like the model zoo's brain synthesis model: 2 values, concatenated to the latent
    and as cross-attention context (random weights from MONAI's own classes)."""
    ae = {
        "in_channels": 1,
        "out_channels": 1,
        "latent_channels": 3,
        "channels": [8, 16],
        "num_res_blocks": 1,
        "norm_num_groups": 8,
        "attention_levels": [False, False],
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    }
    unet = {
        "in_channels": 5,
        "out_channels": 3,
        "channels": [16, 16],
        "num_res_blocks": 1,
        "attention_levels": [False, True],
        "norm_num_groups": 8,
        "num_head_channels": [0, 16],
        "with_conditioning": True,
        "cross_attention_dim": 2,
    }
    config = LDMConfig(2, [16, 16], ae, unet)
    assert config.conditioning == {"concat_channels": 2, "cross_attention_dim": 2}
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cond") / "ldm"
    unet_net = build_unet(config)
    with torch.no_grad():  # MONAI zero-initialises the output layers; give them weights so inputs reach the output
        for parameter in unet_net.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    save_ldm(folder, config, build_autoencoder(config), unet_net)
    return folder


def test_the_conditioning_changes_the_sample_and_the_seed_fixes_it(conditional_ldm: Path) -> None:
    ldm = load_ldm(conditional_ldm)
    seeds = [sample_seed(0, i) for i in range(3)]
    values = np.array([[0.0, 0.1], [1.0, 0.9], [0.0, 0.1]], np.float32)
    out = sample(ldm, seeds, 3, device="cpu", conditions=values)
    one_by_one = [sample(ldm, [s], 3, device="cpu", conditions=values[i : i + 1]) for i, s in enumerate(seeds)]
    again = np.concatenate(one_by_one)
    np.testing.assert_allclose(out, again, atol=1e-5)  # batch size changes nothing
    other = sample(ldm, seeds[:1], 3, device="cpu", conditions=np.array([[1.0, 0.9]], np.float32))
    assert np.abs(other[0] - out[0]).max() > 1e-4  # the values reach the network
    with pytest.raises(MemoScopeError, match="takes conditioning"):
        sample(ldm, seeds, 3, device="cpu")


def test_generate_records_each_samples_values(conditional_ldm: Path, tmp_path: Path) -> None:
    table = tmp_path / "cond.csv"
    table.write_text("index,gender,age\n0,0,0.2\n1,1,0.7\n2,0,0.9\n")
    result = generate(
        GenerateConfig(checkpoint=str(conditional_ldm), out=str(tmp_path / "g"), n=3, steps=2, conditioning=str(table))
    )
    assert result.n_written == 3
    rows = read_csv(tmp_path / "g" / "manifest.csv")
    assert [(r["gender"], r["age"]) for r in rows] == [("0", "0.2"), ("1", "0.7"), ("0", "0.9")]
    record = json.loads((tmp_path / "g" / "generation.json").read_text())
    assert record["conditioning"]["names"] == ["gender", "age"] and record["conditioning"]["csv"] == "cond.csv"
    # resuming with other values would mix two conditionings under one label
    table.write_text("gender,age\n1,0.2\n1,0.7\n1,0.9\n1,0.1\n")
    with pytest.raises(MemoScopeError, match="conditioning"):
        generate(
            GenerateConfig(
                checkpoint=str(conditional_ldm), out=str(tmp_path / "g"), n=4, steps=2, conditioning=str(table)
            )
        )


def test_stated_distributions_are_drawn_per_sample(conditional_ldm: Path, tmp_path: Path) -> None:
    rules = ("gender=uniform(0,1)", "age=normal(0.5,0.1)")
    a = conditioning_values(6, 3, rules=rules)
    b = conditioning_values(2, 3, rules=rules)
    assert a is not None and b is not None and a.names == ["gender", "age"]
    np.testing.assert_array_equal(a.values[:2], b.values)  # a sample's values do not depend on n or batching
    assert ((a.values[:, 0] >= 0) & (a.values[:, 0] < 1)).all() and len(set(a.values[:, 1].tolist())) == 6
    generate(
        GenerateConfig(checkpoint=str(conditional_ldm), out=str(tmp_path / "g"), n=2, steps=1, seed=3, condition=rules)
    )
    rows = read_csv(tmp_path / "g" / "manifest.csv")
    assert float(rows[1]["age"]) == pytest.approx(float(a.values[1, 1]), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({}, "give each sample's 2 conditioning values"),
        ({"condition": ("age=0.5",)}, "takes 2 conditioning values"),
        ({"condition": ("age=uniform(1,0)", "x=1")}, "LOW < HIGH"),
        ({"condition": ("age=old",)}, "NAME=VALUE"),
        ({"conditioning": "missing.csv"}, "no such file"),
    ],
)
def test_bad_conditioning_is_refused_before_any_work(
    conditional_ldm: Path, tmp_path: Path, kwargs: dict, phrase: str
) -> None:
    with pytest.raises(MemoScopeError, match=phrase):
        generate(GenerateConfig(checkpoint=str(conditional_ldm), out=str(tmp_path / "g"), n=2, steps=1, **kwargs))
    assert not (tmp_path / "g").exists()


def test_csv_rows_and_cells_are_checked(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("age\n0.1\n")
    with pytest.raises(MemoScopeError, match="1 rows for 2 samples"):
        conditioning_values(2, 0, csv=str(short))
    bad = tmp_path / "bad.csv"
    bad.write_text("age\n0.1\nold\n")
    with pytest.raises(MemoScopeError, match="row 3, column 'age'"):
        conditioning_values(2, 0, csv=str(bad))
    with pytest.raises(MemoScopeError, match="twice"):
        parse_rules(["age=1", "age=2"])
    from core.generative.conditioning import describe_model

    assert describe_model({"concat_channels": 4, "cross_attention_dim": 4}).startswith("4 values per sample")


def test_an_unconditional_model_takes_no_conditioning(checkpoint_2d: Path, tmp_path: Path) -> None:
    with pytest.raises(MemoScopeError, match="unconditional"):
        generate(GenerateConfig(checkpoint=str(checkpoint_2d), out=str(tmp_path / "g"), n=1, condition=("a=1",)))


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (REPO / "studies" / "demo-2d" / "pairs.csv").is_file(), reason="demo not built")
def test_copies_are_counted_per_conditioning_band(tmp_path: Path) -> None:
    """The committed 2D study, as if its samples had come from a conditional LDM with an age value each."""
    import dataclasses
    import shutil

    from core.study.results import ScanResults
    from core.study.review import copies_by_condition, sample_conditioning

    scan = ScanResults.open(REPO / "studies" / "demo-2d")
    folder = tmp_path / "synthetic"
    shutil.copytree(REPO / "studies" / "demo-2d" / "synthetic", folder)
    record = json.loads((folder / "generation.json").read_text())
    record["conditioning"] = {"names": ["age"], "rules": ["age=uniform(0,1)"], "seed": 0}
    (folder / "generation.json").write_text(json.dumps(record))
    rows = read_csv(folder / "manifest.csv")
    ages = {r["path"]: (int(r["index"]) % 4) / 4 for r in rows}  # four age groups, 0 to 0.75
    lines = ["path,patient_id,split,index,seed,age"] + [
        f"{r['path']},{r['patient_id']},{r['split']},{r['index']},{r['seed']},{ages[r['path']]}" for r in rows
    ]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    synthetic = dataclasses.replace(scan.summary.inputs["synthetic"], source=str(folder))
    summary = scan.summary.replace(inputs={**scan.summary.inputs, "synthetic": synthetic})
    scan = dataclasses.replace(scan, summary=summary)

    found = sample_conditioning(scan.summary)
    assert len(found) == len(rows) and found[rows[1]["path"]] == {"age": 0.25}
    tau = scan.summary.tau
    strata = copies_by_condition(scan, tau, "age")
    assert [s.label for s in strata] == ["age = 0", "age = 0.25", "age = 0.5", "age = 0.75"]
    nearest = scan.nearest()
    for s, age in zip(strata, (0.0, 0.25, 0.5, 0.75), strict=True):
        members = [p for p in nearest if ages[p.synthetic_id] == age]
        assert (s.copies.count, s.copies.total) == (sum(p.similarity > tau for p in members), len(members))
    assert sum(s.copies.count for s in strata) == scan.summary.copies.count
