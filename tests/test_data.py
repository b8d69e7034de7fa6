"""Image loading: formats, IDs, manifests, slices, patient split and bad input."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from core.common.errors import MemoScopeError
from core.io.discover import discover
from core.io.load import ImageSet, load_records, load_set
from core.io.preprocessing import PreprocessSpec
from core.io.readers import read_raw
from core.io.splits import split_by_patient

SPEC2 = PreprocessSpec((32, 32))


def test_folder_ids_patients_and_formats(image_folder: Path) -> None:
    images = load_set(image_folder, SPEC2)
    assert images.ids == ["p1/a.png", "p1/b.npy", "p2/c.nii.gz"]
    assert images.patient_ids == ["p1", "p1", "p2"]
    assert images.images.shape == (3, 1, 32, 32) and images.images.dtype == np.float32


def test_png16_keeps_sixteen_bits(image_folder: Path) -> None:
    raw = read_raw(image_folder / "p1" / "a.png")
    assert raw.dtype in (np.uint16, np.int32) and raw.max() > 255


def test_dicom_file_and_series(tmp_path: Path) -> None:
    ct = read_raw(get_testdata_file("CT_small.dcm"))
    assert ct.shape == (128, 128) and ct.min() < 0  # rescale to HU applied
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0, 0, float(k)]
        ds.save_as(series / f"{k}.dcm")
    records = discover(tmp_path)
    assert [r.sample_id for r in records] == ["series"]
    assert read_raw(series).shape == (128, 128, 3)


def test_manifest_with_split_filters_by_role(image_folder: Path) -> None:
    manifest = image_folder / "m.csv"
    manifest.write_text("path,patient_id,split\np1/a.png,A,train\np1/b.npy,A,train\np2/c.nii.gz,B,val\n")
    assert load_set(manifest, SPEC2, role="train").ids == ["p1/a.png", "p1/b.npy"]
    assert load_set(manifest, SPEC2, role="val").patient_ids == ["B"]


def test_duplicate_manifest_row_names_the_line(image_folder: Path) -> None:
    manifest = image_folder / "m.csv"
    manifest.write_text("path,patient_id\np1/a.png,A\np1/a.png,A\n")
    with pytest.raises(MemoScopeError, match="line 3: duplicate path"):
        load_set(manifest, SPEC2)


def test_slices_of_volume_keep_patient_and_index(tmp_path: Path) -> None:
    vol = np.zeros((20, 20, 6), np.float32)
    vol[5:15, 5:15, 1:5] = np.arange(4, dtype=np.float32) + 1  # slices 0 and 5 are empty
    (tmp_path / "s1").mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "s1" / "v.nii.gz"))
    images = load_set(tmp_path, PreprocessSpec((16, 16)), slices="axial")
    assert images.ids == [f"s1/v.nii.gz#axial{k:03d}" for k in range(1, 5)]
    assert set(images.patient_ids) == {"s1"}
    with pytest.raises(MemoScopeError, match="--slices"):
        load_set(tmp_path, PreprocessSpec((16, 16)))


def test_bad_files_name_the_file_and_skip_bad_lists_them(image_folder: Path) -> None:
    good = (image_folder / "p2" / "c.nii.gz").read_bytes()
    (image_folder / "p2" / "truncated.nii.gz").write_bytes(good[: len(good) // 3])
    nan = np.ones((40, 40), np.float32)
    nan[3, 3] = np.nan
    np.save(image_folder / "p2" / "nan.npy", nan)
    with pytest.raises(MemoScopeError, match="nan.npy: 1 NaN/Inf"):
        load_set(image_folder, SPEC2)
    images = load_set(image_folder, SPEC2, skip_bad=True)
    assert len(images) == 3
    assert sorted(Path(s.path).name for s in images.skipped) == ["nan.npy", "truncated.nii.gz"]
    reasons = {Path(s.path).name: s.reason for s in images.skipped}
    assert "NaN/Inf voxels" in reasons["nan.npy"] and "may be truncated" in reasons["truncated.nii.gz"]


def test_wrong_dimensionality_and_empty_folder(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(MemoScopeError, match="is 2D"):
        load_set(image_folder, PreprocessSpec((8, 8, 8)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemoScopeError, match="no images found"):
        load_set(tmp_path / "empty", SPEC2)


def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MemoScopeError, match="obj.npy"):
        read_raw(tmp_path / "obj.npy")


def test_split_by_patient_never_shares_a_patient() -> None:
    patients = [f"p{i // 3}" for i in range(30)]
    train, val = split_by_patient(patients, 0.3, seed=1)
    assert not {patients[i] for i in train} & {patients[i] for i in val}
    assert len(train) + len(val) == 30 and len({patients[i] for i in val}) == 3
    again = split_by_patient(patients, 0.3, seed=1)
    assert np.array_equal(again[1], val)


def test_a_set_past_its_memory_budget_is_memory_mapped_identically_and_leaves_no_file(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMOSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    spec = PreprocessSpec((16, 16))
    in_memory = load_records(discover(image_folder), spec, str(image_folder))
    spilled = load_records(discover(image_folder), spec, str(image_folder), budget=16 * 16 * 4)  # one image
    assert isinstance(spilled.images, np.memmap) and not isinstance(in_memory.images, np.memmap)
    np.testing.assert_array_equal(spilled.images, in_memory.images)
    assert spilled.ids == in_memory.ids and spilled.content_hash == in_memory.content_hash
    assert not list((tmp_path / "cache").iterdir())  # unlinked once mapped: nothing left behind
    np.testing.assert_array_equal(spilled.subset([2, 0]).images, in_memory.images[[2, 0]])


def test_hashing_in_chunks_matches_hashing_whole() -> None:
    import hashlib

    from core.common.provenance import sha256_array

    array = np.random.default_rng(0).normal(size=(1000, 1, 8, 8)).astype(np.float32)
    whole = hashlib.sha256(b"float32" + str(array.shape).encode() + array.tobytes()).hexdigest()
    assert sha256_array(array, chunk_rows=7) == sha256_array(array) == whole


def test_worker_processes_load_the_same_set_in_the_same_order(tmp_path: Path) -> None:
    from core.io.load import PARALLEL_FROM, load_workers

    rng = np.random.default_rng(0)
    for i in range(PARALLEL_FROM + 8):
        folder = tmp_path / f"p{i % 5}"
        folder.mkdir(exist_ok=True)
        np.save(folder / f"{i:03d}.npy", rng.random((40, 40), dtype=np.float32))
    np.save(tmp_path / "p2" / "017.npy", np.zeros((40, 40), dtype=np.float32))  # constant: refused by name
    (tmp_path / "p4" / "029.npy").write_bytes(b"not an array")
    records = discover(tmp_path)
    readers = tmp_path / "readers.txt"

    def read(path: Path) -> np.ndarray:  # notes which process read each file, and its torch threads
        with readers.open("a") as f:
            f.write(f"{os.getpid()}:{torch.get_num_threads()}\n")
        return read_raw(path)

    threads_before = torch.get_num_threads()

    def readers_of(workers: int) -> tuple[ImageSet, set[str], set[str]]:
        readers.unlink(missing_ok=True)
        loaded = load_records(records, SPEC2, "set", skip_bad=True, workers=workers, read=read)
        seen = [line.split(":") for line in readers.read_text().split()]
        return loaded, {pid for pid, _ in seen}, {threads for _, threads in seen}

    here, pids_here, threads_here = readers_of(0)
    apart, pids_apart, threads_apart = readers_of(2)
    assert pids_here == {str(os.getpid())}
    if threading.active_count() == 1:  # two worker processes read every file
        assert str(os.getpid()) not in pids_apart and len(pids_apart) == 2
    else:  # a process running other threads (pytest-xdist's) must not fork: it reads them itself
        assert pids_apart == {str(os.getpid())}
    # one torch thread wherever a file is preprocessed: some resizes round differently with another thread count
    assert threads_here == threads_apart == {"1"} and torch.get_num_threads() == threads_before
    assert apart.ids == here.ids and apart.patient_ids == here.patient_ids and len(here.ids) == PARALLEL_FROM + 6
    assert np.array_equal(apart.images, here.images) and apart.skipped == here.skipped
    # without skip_bad the first bad file in file order is named, whoever read it
    for workers in (0, 2):
        with pytest.raises(MemoScopeError, match="p2/017.npy: constant image"):
            load_records(records, SPEC2, "set", workers=workers)
    assert load_workers() >= 1


def test_load_workers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.io.load import load_workers

    monkeypatch.setenv("MEMOSCOPE_LOAD_WORKERS", "0")
    assert load_workers() == 0
    monkeypatch.setenv("MEMOSCOPE_LOAD_WORKERS", "many")
    with pytest.raises(MemoScopeError, match="MEMOSCOPE_LOAD_WORKERS='many'"):
        load_workers()
