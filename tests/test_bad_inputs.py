"""A catalogue of bad inputs: each is refused with exit code 2, a message naming the file or option and what to do,
no traceback, and nothing written or lost."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.cli import main
from core.generative.ldm import default_config
from core.study.results import SUMMARY
from tests.conftest import smooth_image

Setup = Callable[[Path], list[str]]


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = smooth_image(np.random.default_rng(seed), (32, 32))
    u16 = ((image - image.min()) / (np.ptp(image) or 1) * 65535).astype(np.uint16)
    Image.fromarray(u16).save(path)


def _sets(root: Path, n_val: int = 60) -> tuple[Path, Path, Path]:
    """Training (2 patients), validation (3 patients) and synthetic folders of distinct images."""
    for i in range(8):
        _png(root / "train" / f"P{i % 2}" / f"{i}.png", i)
    for i in range(n_val):
        _png(root / "val" / f"V{i % 3}" / f"{i}.png", 100 + i)
    for i in range(4):
        _png(root / "synthetic" / f"s{i}.png", 200 + i)
    return root / "train", root / "val", root / "synthetic"


def _scan_args(root: Path, train: Path, val: Path, *extra: str) -> list[str]:
    return [
        "scan",
        "--train",
        str(train),
        "--val",
        str(val),
        "--synthetic",
        str(root / "synthetic"),
        "--out",
        str(root / "study"),
        "--size",
        "32",
        "--detector-epochs",
        "1",
        *extra,
    ]


def _manifest(root: Path, rows: list[str], name: str = "m.csv", bom: bool = False) -> Path:
    path = root / name
    path.write_text(("\ufeff" if bom else "") + "path,patient_id,split\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def flat_folder_split(root: Path) -> list[str]:
    for i in range(4):
        _png(root / "flat" / f"sub-0{i // 2}_slice{i}.png", i)
    return ["split", "--input", str(root / "flat"), "--out", str(root / "split.csv")]


def split_out_is_a_folder(root: Path) -> list[str]:
    train, _, _ = _sets(root)
    return ["split", "--input", str(train), "--out", str(root)]


def split_typo_in_manifest(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    rows = [f"train/P0/{i}.png,P0,train" for i in range(0, 8, 2)] + [f"val/V0/{i}.png,V0,validaton" for i in (0, 3)]
    manifest = _manifest(root, rows)
    return _scan_args(root, manifest, manifest)


def manifest_row_is_a_folder(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    manifest = _manifest(root, ["train/P0,P0,train", "val/V0/0.png,V0,val"])
    return _scan_args(root, manifest, manifest)


def validation_image_equals_training_image(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    shutil.copy(train / "P0" / "0.png", val / "V0" / "copied.png")
    return _scan_args(root, train, val)


def validation_image_nearly_equals_training_image(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    image = np.asarray(Image.open(train / "P0" / "0.png"), dtype=np.float64)
    noisy = image + np.random.default_rng(0).normal(0, 200, image.shape)  # a re-encoded copy, not byte-identical
    Image.fromarray(np.clip(noisy, 0, 65535).astype(np.uint16)).save(val / "V0" / "near.png")
    return _scan_args(root, train, val, "--threshold-rule", "heldout", "--percentile", "90")


def patient_ids_differ_only_by_case(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    shutil.copytree(val / "V0", val / "p0")  # "p0" in validation, "P0" in training
    shutil.rmtree(val / "V0")
    return _scan_args(root, train, val)


def patient_ids_in_two_unicode_forms(root: Path) -> list[str]:
    """ "Müller" composed (NFC) in training, decomposed (NFD, macOS file names) in validation: one patient."""
    train, val, _ = _sets(root)
    shutil.move(train / "P0", train / "M\u00fcller")
    shutil.move(val / "V0", val / "Mu\u0308ller")
    return _scan_args(root, train, val)


def patient_id_with_a_zero_width_space(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    shutil.move(val / "V0", val / "P\u200b0")  # shows as "P0", the training patient
    return _scan_args(root, train, val)


def npy_without_voxels(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    np.save(root / "synthetic" / "empty.npy", np.zeros((0, 64), np.float32))
    return _scan_args(root, train, val)


def scan_out_is_a_file(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    args = _scan_args(root, train, val)
    (root / "study").write_text("not a folder")
    return args


def k_is_zero(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    return _scan_args(root, train, val, "--k", "0")


def scan_on_a_missing_gpu(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    return _scan_args(root, train, val, "--device", "cuda:0" if not torch.cuda.is_available() else "cuda:99")


def scan_in_fp16_on_a_cpu(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    return _scan_args(root, train, val, "--device", "cpu", "--precision", "fp16")


def train_ldm_on_a_missing_gpu(root: Path) -> list[str]:
    train, _, _ = _sets(root)
    device = "cuda:0" if not torch.cuda.is_available() else "cuda:99"
    return ["train-ldm", "--data", str(train), "--out", str(root / "ldm"), "--device", device, "--size", "16"]


def fixed_threshold_out_of_range(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    return _scan_args(root, train, val, "--threshold-rule", "fixed:7")


def validation_too_small_for_the_percentile(root: Path) -> list[str]:
    train, val, _ = _sets(root, n_val=6)
    return _scan_args(root, train, val, "--percentile", "95", "--threshold-rule", "paper")


def validation_too_small_for_the_confidence_bound(root: Path) -> list[str]:
    train, val, _ = _sets(root, n_val=6)
    return _scan_args(root, train, val, "--threshold-rule", "heldout-ucb")


def validation_of_one_patient(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    for png in sorted(val.rglob("*.png")):  # every validation scan under one patient folder
        target = val / "V9" / png.name
        target.parent.mkdir(exist_ok=True)
        png.rename(target)
    return _scan_args(root, train, val)  # the default: verified, heldout-patient


def garbage_study_database(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    (root / "study").mkdir()
    (root / "study" / "study.sqlite").write_bytes(b"this is not SQLite" * 100)
    return _scan_args(root, train, val)


def corrupt_summary_for_report(root: Path) -> list[str]:
    (root / "study").mkdir()
    (root / "study" / SUMMARY).write_text('{"schema_version": 2, "threshold": ')
    return ["report", "--study", str(root / "study")]


def summary_that_is_a_list(root: Path) -> list[str]:
    (root / "study").mkdir()
    (root / "study" / SUMMARY).write_text("[1, 2, 3]")
    return ["report", "--study", str(root / "study"), "--out", str(root / "study" / "report.html")]


def summary_nested_too_deeply(root: Path) -> list[str]:
    (root / "study").mkdir()
    (root / "study" / SUMMARY).write_text("[" * 100_000 + "]" * 100_000)
    return ["release", "--study", str(root / "study"), "--out", str(root / "release")]


def older_study_for_release(root: Path) -> list[str]:
    (root / "study").mkdir()
    (root / "study" / SUMMARY).write_text(json.dumps({"threshold": 0.9, "rule": "paper"}))
    return ["release", "--study", str(root / "study"), "--out", str(root / "release")]


def _import_args(root: Path, autoencoder: str, unet: str) -> list[str]:
    """``import-checkpoint`` of two weight files in ``root`` with ``root/kw.json``, into ``root/ck``."""
    return [
        "import-checkpoint",
        "--autoencoder",
        str(root / autoencoder),
        "--unet",
        str(root / unet),
        "--config",
        str(root / "kw.json"),
        "--out",
        str(root / "ck"),
    ]


def _kwargs(root: Path) -> None:
    config = default_config(2, (32, 32)).to_dict()
    (root / "kw.json").write_text(
        json.dumps({k: config[k] for k in ("spatial_dims", "image_size", "autoencoder", "unet")})
    )


def pickle_named_safetensors(root: Path) -> list[str]:
    (root / "ae.safetensors").write_bytes(pickle.dumps({"weight": [1.0]}))
    (root / "unet.safetensors").write_bytes(pickle.dumps({"weight": [1.0]}))
    _kwargs(root)
    return _import_args(root, "ae.safetensors", "unet.safetensors")


def text_file_named_pt(root: Path) -> list[str]:
    (root / "ae.pt").write_text("hello")
    (root / "unet.pt").write_text("hello")
    _kwargs(root)
    return _import_args(root, "ae.pt", "unet.pt")


def network_keywords_that_do_not_build(root: Path) -> list[str]:
    (root / "kw.json").write_text(
        json.dumps({"spatial_dims": 2, "image_size": [32, 32], "autoencoder": {}, "unet": {}})
    )
    (root / "w.safetensors").write_bytes(b"")
    return _import_args(root, "w.safetensors", "w.safetensors")


def _kwargs_with(root: Path, part: str, **values: object) -> list[str]:
    """``import-checkpoint`` of a config whose ``part`` (autoencoder, unet, scheduler, or "" for the top level)
    carries ``values``: what import once accepted and generate then crashed on."""
    config = default_config(2, (32, 32)).to_dict()
    config = {k: config[k] for k in ("spatial_dims", "image_size", "autoencoder", "unet", "scheduler")}
    if part:
        config[part] = {**config[part], **values}
    else:
        config.update(values)
    (root / "kw.json").write_text(json.dumps(config))
    (root / "w.safetensors").write_bytes(b"")
    return _import_args(root, "w.safetensors", "w.safetensors")


def nested_target_as_norm_eps(root: Path) -> list[str]:
    return _kwargs_with(root, "autoencoder", norm_eps={"_target_": "os.system", "command": "echo hi"})


def scale_factor_as_text(root: Path) -> list[str]:
    return _kwargs_with(root, "", scale_factor="abc")


def zero_train_timesteps(root: Path) -> list[str]:
    return _kwargs_with(root, "scheduler", num_train_timesteps=0)


def schedule_naming_a_function(root: Path) -> list[str]:
    return _kwargs_with(root, "scheduler", schedule="os.system")


def nan_beta_start(root: Path) -> list[str]:
    return _kwargs_with(root, "scheduler", beta_start=float("nan"))


def _bundle(root: Path, text: str) -> list[str]:
    (root / "b" / "configs").mkdir(parents=True)
    (root / "b" / "models").mkdir()
    (root / "b" / "configs" / "inference.yaml").write_text(text)
    return ["import-checkpoint", "--bundle", str(root / "b"), "--out", str(root / "ck")]


def bundle_yaml_with_a_python_tag(root: Path) -> list[str]:
    return _bundle(root, "autoencoder_def: !!python/object/apply:os.system ['echo owned']\n")


def bundle_yaml_broken(root: Path) -> list[str]:
    return _bundle(root, "autoencoder_def: {spatial_dims: 2\n  - [unclosed\n")


def generate_more_steps_than_the_schedule(root: Path) -> list[str]:
    return ["generate", "--checkpoint", str(CHECKPOINT), "--out", str(root / "g"), "--n", "1", "--steps", "5000"]


def nan_weights(root: Path) -> list[str]:
    from safetensors.torch import load_file, save_file

    from core.generative.ldm import write_checksums

    shutil.copytree(CHECKPOINT, root / "ck")
    state = load_file(root / "ck" / "unet.safetensors")
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, root / "ck" / "unet.safetensors")
    write_checksums(root / "ck")  # the damage is in the weights themselves, not in transit
    return ["generate", "--checkpoint", str(root / "ck"), "--out", str(root / "g"), "--n", "1", "--steps", "1"]


def embed_out_is_a_folder(root: Path) -> list[str]:
    _sets(root)
    (root / "e").mkdir()
    det = str(REPO / "checkpoints" / "demo-2d-detector")
    return ["embed", "--detector", det, "--input", str(root / "train"), "--out", str(root / "e")]


def percentile_100(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    return _scan_args(root, train, val, "--percentile", "100")


def scan_out_is_empty(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    args = _scan_args(root, train, val)
    args[args.index("--out") + 1] = ""
    return args


def image_size_beyond_memory(root: Path) -> list[str]:
    return _kwargs_with(root, "", image_size=[400000, 400000])


def generate_into_a_folder_of_real_scans(root: Path) -> list[str]:
    _sets(root)
    return ["generate", "--checkpoint", str(CHECKPOINT), "--out", str(root / "train"), "--n", "1", "--steps", "1"]


def generate_fewer_into_a_finished_generation(root: Path) -> list[str]:
    """A set a study scanned (6 samples) must not become a set of 4 with the same checkpoint and settings."""
    args = ["generate", "--checkpoint", str(CHECKPOINT), "--out", str(root / "g"), "--steps", "1", "--device", "cpu"]
    assert main([*args, "--n", "6"]) == 0
    return [*args, "--n", "4"]


def generate_zero_samples(root: Path) -> list[str]:
    return ["generate", "--checkpoint", str(root / "none"), "--out", str(root / "g"), "--n", "0"]


REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "demo-2d-noaug-e0025"


def flipped_bytes_in_weights(root: Path) -> list[str]:
    shutil.copytree(CHECKPOINT, root / "ck")
    weights = root / "ck" / "unet.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4000):
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    return ["generate", "--checkpoint", str(root / "ck"), "--out", str(root / "g"), "--n", "1", "--steps", "1"]


def resume_with_another_scheduler(root: Path) -> list[str]:
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(CHECKPOINT),
                "--out",
                str(root / "g"),
                "--n",
                "1",
                "--steps",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    shutil.move(root / "g", root / "kept")  # what must stay untouched is the first run's folder
    shutil.copytree(root / "kept", root / "g")
    return [
        "generate",
        "--checkpoint",
        str(CHECKPOINT),
        "--out",
        str(root / "g"),
        "--n",
        "2",
        "--steps",
        "2",
        "--scheduler",
        "ddpm",
        "--device",
        "cpu",
    ]


def complex_npy(root: Path) -> list[str]:
    train, val, _ = _sets(root)
    np.save(val / "V1" / "complex.npy", np.ones((32, 32), dtype=np.complex64))
    return _scan_args(root, train, val)


def truncated_detector_weights(root: Path) -> list[str]:
    shutil.copytree(REPO / "checkpoints" / "demo-2d-detector", root / "det")
    weights = root / "det" / "detector.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return [
        "embed",
        "--detector",
        str(root / "det"),
        "--input",
        str(REPO / "studies" / "demo-2d" / "synthetic"),
        "--out",
        str(root / "e.npz"),
    ]


def image_size_as_text(root: Path) -> list[str]:
    config = default_config(2, (32, 32)).to_dict()
    (root / "kw.json").write_text(
        json.dumps({**{k: config[k] for k in ("spatial_dims", "autoencoder", "unet")}, "image_size": "32"})
    )
    (root / "w.safetensors").write_bytes(b"")
    return _import_args(root, "w.safetensors", "w.safetensors")


# (setup, a phrase the message must contain, a path that must not exist afterwards)
CASES: list[tuple[Setup, str, str | None]] = [
    (flat_folder_split, "no patient subfolders", "split.csv"),
    (split_out_is_a_folder, "is a folder; give the manifest file", None),
    (split_typo_in_manifest, "split 'validaton' is not one of", "study"),
    (manifest_row_is_a_folder, "'train/P0' is a folder", "study"),
    (validation_image_equals_training_image, "identical to training images", "study/detector"),
    (validation_image_nearly_equals_training_image, "is a near-copy of training image", "study/detector"),
    (patient_ids_differ_only_by_case, "appear in both training", "study/detector"),
    (patient_ids_in_two_unicode_forms, "appear in both training", "study/detector"),
    (patient_id_with_a_zero_width_space, "appear in both training", "study/detector"),
    (npy_without_voxels, "empty.npy: shape (0, 64) is not an image", "study/detector"),
    (scan_out_is_a_file, "is a file; give a folder", None),
    (k_is_zero, "k 0 must be in [1, inf]", "study"),
    (scan_on_a_missing_gpu, "--device cuda", "study"),
    (train_ldm_on_a_missing_gpu, "--device cuda", "ldm"),
    (scan_in_fp16_on_a_cpu, "fp16 needs a GPU", "study"),
    (fixed_threshold_out_of_range, "fixed:X needs a number X in [-1, 1]", "study"),
    (validation_too_small_for_the_percentile, "percentile 95 needs at least 20", "study/detector"),
    (
        validation_too_small_for_the_confidence_bound,
        "heldout-ucb rule at percentile 95 needs at least 59",
        "study/detector",
    ),
    (validation_of_one_patient, "heldout-patient rule measures how the threshold transfers", "study/detector"),
    (garbage_study_database, "not a readable study database", None),
    (corrupt_summary_for_report, "not valid JSON", "study/report.html"),
    (summary_that_is_a_list, "holds a JSON list, not a scan summary", "study/report.html"),
    (summary_nested_too_deeply, "nested too deeply", "release"),
    (older_study_for_release, "upgrade-study", "release"),
    (pickle_named_safetensors, "ae.safetensors", "ck"),
    (text_file_named_pt, "ae.pt", "ck"),
    (network_keywords_that_do_not_build, "kw.json: the network keywords do not build", "ck"),
    (generate_zero_samples, "n 0 must be in [1, inf]", "g"),
    (generate_fewer_into_a_finished_generation, "would replace the set a study may have scanned", None),
    (
        generate_into_a_folder_of_real_scans,
        "MemoScope did not generate (e.g. 0.png: real scans?)",
        "train/generation.json",
    ),
    (percentile_100, "percentile 100 puts the threshold above every validation score", "study"),
    (scan_out_is_empty, "--out is empty", "detector"),
    (image_size_beyond_memory, "160,000,000,000 pixels per sample", "ck"),
    (nested_target_as_norm_eps, "autoencoder.norm_eps: a nested object", "ck"),
    (scale_factor_as_text, "scale_factor 'abc' must be a finite number above 0", "ck"),
    (zero_train_timesteps, "num_train_timesteps 0 must be a whole number of at least 1", "ck"),
    (schedule_naming_a_function, "scheduler.schedule 'os.system' is not a noise schedule", "ck"),
    (nan_beta_start, "scheduler.beta_start: nan is not a finite number", "ck"),
    (bundle_yaml_with_a_python_tag, "Python tags such as !!python/object are never run", "ck"),
    (bundle_yaml_broken, "not a plain YAML bundle config", "ck"),
    (generate_more_steps_than_the_schedule, "--steps 5000: the checkpoint's schedule has 1000 timesteps", "g"),
    (nan_weights, "weight tensor(s) hold NaN or Inf", "g"),
    (embed_out_is_a_folder, "is a folder; give the .npz file", None),
    (complex_npy, "complex voxels (complex64); save the magnitude", "study/detector"),
    (truncated_detector_weights, "detector.safetensors: not a readable safetensors file", "e.npz"),
    (image_size_as_text, "image_size '32' must be a list of integers", "ck"),
    (flipped_bytes_in_weights, "its bytes differ from checksums.json", "g"),
    (resume_with_another_scheduler, "another checkpoint, seed, step count, scheduler", "g/sample_000001.png"),
]


@pytest.mark.parametrize(("setup", "phrase", "absent"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_is_refused_clearly(
    setup: Setup, phrase: str, absent: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = setup(tmp_path)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert phrase in captured.err, captured.err
    assert "Traceback" not in captured.err + captured.out
    if absent is not None:
        assert not (tmp_path / absent).exists(), f"{absent} was left behind"
    assert not list(tmp_path.rglob(".scan-*.tmp")), "a staging folder was left behind"


def test_a_manifest_saved_with_a_byte_order_mark_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sets(tmp_path)
    rows = [f"train/P{i % 2}/{i}.png,P{i % 2},train" for i in range(8)]
    manifest = _manifest(tmp_path, rows, bom=True)
    assert main(["split", "--input", str(manifest), "--out", str(tmp_path / "s.csv")]) == 0, capsys.readouterr().err


def test_split_by_a_patient_pattern_keeps_subjects_together(tmp_path: Path) -> None:
    for i in range(8):
        _png(tmp_path / "flat" / f"sub-0{i // 2}_slice{i}.png", i)
    out = tmp_path / "split.csv"
    pattern = r"pattern:^(?P<patient>sub-\d+)_"
    assert main(["split", "--input", str(tmp_path / "flat"), "--out", str(out), "--patients", pattern]) == 0
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    sides = {patient: {r[2] for r in rows if r[1] == patient} for _, patient, _ in rows}
    assert len(sides) == 4 and all(len(s) == 1 for s in sides.values())


def test_grey_alpha_png_and_symlinked_patient_folders_are_read(tmp_path: Path) -> None:
    from core.io.discover import discover
    from core.io.readers import read_raw

    grey = (np.arange(64, dtype=np.uint8).reshape(8, 8)) * 3
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], axis=-1), mode="LA").save(tmp_path / "la.png")
    assert np.array_equal(read_raw(tmp_path / "la.png"), grey)
    (tmp_path / "elsewhere" / "P9").mkdir(parents=True)
    np.save(tmp_path / "elsewhere" / "P9" / "x.npy", np.ones((4, 4)))
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "P9").symlink_to(tmp_path / "elsewhere" / "P9", target_is_directory=True)
    (tmp_path / "set" / "P9" / "loop").symlink_to(
        tmp_path / "set", target_is_directory=True
    )  # a cycle is not followed twice
    assert [r.sample_id for r in discover(tmp_path / "set")] == ["P9/x.npy"]
