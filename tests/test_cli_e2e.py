"""Every CLI command, end to end, on tiny real MR slices: each step's output feeds the next, as a user chains them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from core.cli import main
from core.generative.ldm import checkpoint_hash, load_ldm
from core.generative.sample import to_uint16
from core.io.sample_data import REAL_VOLUMES, axial_slices
from core.study.privacy import read_privacy
from core.study.results import SCHEMA_VERSION, ScanResults

SUBJECTS = ("mni152", "nibabel-example4d", "nibabel-anatomical", "dipy-aniso-vox")
SIZE = "32"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real axial slices of four subjects, one folder per subject (the folder is the patient)."""
    root = tmp_path_factory.mktemp("cli")
    for volume in REAL_VOLUMES:
        if volume.subject in SUBJECTS:
            folder = root / "images" / volume.subject
            folder.mkdir(parents=True)
            for i, image in enumerate(axial_slices(volume, 32)[::3][:8]):
                Image.fromarray(to_uint16(image[0])).save(folder / f"{i:03d}.png")
    (root / "networks.json").write_text(
        json.dumps({"autoencoder": {"channels": [16, 32, 32]}, "unet": {"channels": [32, 32, 64]}})
    )
    return root


def _run(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_the_whole_chain_of_commands(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # split: whole subjects go to one side
    _run("split", "--input", str(work / "images"), "--out", str(work / "manifest.csv"), "--val-fraction", "0.5")
    rows = _rows(work / "manifest.csv")
    sides = {r["patient_id"]: {x["split"] for x in rows if x["patient_id"] == r["patient_id"]} for r in rows}
    assert all(len(s) == 1 for s in sides.values()) and {"train", "val"} == {r["split"] for r in rows}
    manifest = str(work / "manifest.csv")

    # train-ldm and info: a checkpoint whose config records the data
    _run(
        "train-ldm",
        "--data",
        manifest,
        "--out",
        str(work / "ldm"),
        "--size",
        SIZE,
        "--ae-epochs",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--networks",
        str(work / "networks.json"),
        "--note",
        "cli test",
    )
    checkpoint = work / "ldm" / "last"
    capsys.readouterr()
    _run("info", "--checkpoint", str(checkpoint))
    info = json.loads(capsys.readouterr().out)
    assert info["checkpoint_hash"] == checkpoint_hash(checkpoint) and info["image_size"] == [32, 32]
    assert "cli test" in info["provenance"]["notes"]

    # import-checkpoint: the same weights through the import path give the same networks
    config = {k: info[k] for k in ("spatial_dims", "image_size", "autoencoder", "unet", "scheduler", "scale_factor")}
    (work / "kwargs.json").write_text(json.dumps(config))
    _run(
        "import-checkpoint",
        "--autoencoder",
        str(checkpoint / "autoencoder.safetensors"),
        "--unet",
        str(checkpoint / "unet.safetensors"),
        "--config",
        str(work / "kwargs.json"),
        "--out",
        str(work / "imported"),
    )
    original, imported = load_ldm(checkpoint), load_ldm(work / "imported")
    for a, b in ((original.unet, imported.unet), (original.autoencoder, imported.autoencoder)):
        assert all((x == y).all() for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    # generate: files, manifest and record
    _run(
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(work / "synthetic"),
        "--n",
        "3",
        "--steps",
        "2",
        "--device",
        "cpu",
    )
    assert [r["path"] for r in _rows(work / "synthetic" / "manifest.csv")] == [f"sample_{i:06d}.png" for i in range(3)]
    assert b"\r\n" not in (work / "synthetic" / "manifest.csv").read_bytes()

    # train-detector and embed
    _run(
        "train-detector",
        "--train",
        manifest,
        "--val",
        manifest,
        "--out",
        str(work / "detector"),
        "--size",
        SIZE,
        "--arch",
        "convres",
        "--detector-epochs",
        "2",
        "--batch-size",
        "8",
    )
    _run(
        "embed", "--detector", str(work / "detector"), "--input", str(work / "synthetic"), "--out", str(work / "e.npz")
    )
    import numpy as np

    with np.load(work / "e.npz") as data:
        assert data["vectors"].shape[0] == 3 and len(data["ids"]) == 3

    # scan with that detector, then the study commands
    study = work / "study"
    _run(
        "scan",
        "--train",
        manifest,
        "--val",
        manifest,
        "--synthetic",
        str(work / "synthetic"),
        "--out",
        str(study),
        "--detector",
        str(work / "detector"),
        "--percentile",
        "50",
        "--k",
        "2",
    )
    scan = ScanResults.open(study)
    assert scan.summary.schema_version == SCHEMA_VERSION and scan.summary.inputs["synthetic"].n == 3
    assert scan.summary.checkpoint_hash == checkpoint_hash(checkpoint) and len(scan.pairs()) == 6
    # the samples name their checkpoint, so the scan ran the privacy tests as its last step; 3 samples are too few
    # to rank for C_T, which is said, while membership and the two shares answer
    privacy = read_privacy(study)
    assert privacy is not None and privacy.scan_id == scan.summary.scan_id
    assert privacy.checkpoint_hash == scan.summary.checkpoint_hash and privacy.membership is not None
    assert privacy.ct is None and privacy.ct_note.startswith("C_T needs at least 5")
    assert privacy.nearest_record.n == 3 and set(privacy.timings) == {"distribution tests", "membership"}
    capsys.readouterr()
    _run("upgrade-study", "--study", str(study))
    assert "already at schema" in capsys.readouterr().out
    _run("report", "--study", str(study))
    assert f"tau = <b>{scan.summary.tau:.3f}</b>" in (study / "report.html").read_text()
    _run("release", "--study", str(study), "--out", str(work / "release"))
    record = json.loads((work / "release" / "release.json").read_text())
    assert record["kept"] + record["removed_by_threshold"] == 3
    assert len(list((work / "release" / "samples").iterdir())) == record["kept"]


def test_bad_config_values_are_refused_before_any_work(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "scan",
            "--train",
            "x",
            "--val",
            "x",
            "--synthetic",
            "x",
            "--out",
            str(work / "never"),
            "--threshold-rule",
            "fixed:7",
        ]
    )
    assert code == 2 and "fixed:X needs a number X in [-1, 1]" in capsys.readouterr().err
    assert not (work / "never").exists()
    code = main(["generate", "--checkpoint", "c", "--out", str(work / "never"), "--n", "0"])
    assert code == 2 and "n 0 must be in [1, inf]" in capsys.readouterr().err
