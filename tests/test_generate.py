"""Generation: per-sample determinism across batch sizes, resume, output formats, manifest."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from core.common.errors import MemoScopeError
from core.generative.ldm import build_autoencoder, build_scheduler, build_unet, default_config, load_ldm, save_ldm
from core.generative.sample import GenerateConfig, generate, sample, sample_seed


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_sample_depends_only_on_seed_and_index(checkpoint_2d: Path, scheduler: str) -> None:
    ldm = load_ldm(checkpoint_2d)
    seeds = [sample_seed(7, i) for i in range(4)]
    together = sample(ldm, seeds, 4, scheduler)  # type: ignore[arg-type]
    alone = np.concatenate([sample(ldm, [s], 4, scheduler) for s in seeds])  # type: ignore[arg-type]
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])
    np.testing.assert_array_equal(together, sample(ldm, seeds, 4, scheduler))  # type: ignore[arg-type]


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_the_batched_sampler_matches_monai_stepping_each_sample_with_its_own_generator(
    checkpoint_2d: Path, scheduler: str
) -> None:
    """The reference: MONAI's scheduler.step per sample, each drawing its noise from that sample's CPU generator."""
    ldm = load_ldm(checkpoint_2d)
    seeds = [sample_seed(3, i) for i in range(3)]
    reference = []
    for seed in seeds:
        steps = build_scheduler(ldm.config, scheduler)  # type: ignore[arg-type]
        steps.set_timesteps(num_inference_steps=5)  # type: ignore[operator]
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(ldm.config.latent_shape, generator=g)[None]
        with torch.inference_mode():
            for t in steps.timesteps:
                eps = ldm.unet(x, timesteps=torch.full((1,), int(t), dtype=torch.long))
                x = steps.step(eps, int(t), x, generator=g)[0]  # type: ignore[operator]
            image = ldm.autoencoder.decode_stage_2_outputs(x / ldm.config.scale_factor)
        reference.append(image.clamp(-1, 1).numpy())
    np.testing.assert_allclose(sample(ldm, seeds, 5, scheduler), np.concatenate(reference), atol=1e-5)  # type: ignore[arg-type]


def test_generate_writes_png16_manifest_and_resumes(checkpoint_2d: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    first = generate(
        GenerateConfig(checkpoint=str(checkpoint_2d), out=str(out), n=3, steps=2, batch_size=2, device="cpu")
    )
    assert first.n_written == 3
    png = np.asarray(Image.open(out / "sample_000000.png"))
    assert png.shape == (16, 16) and png.dtype == np.uint16
    before = (out / "sample_000000.png").read_bytes()
    second = generate(
        GenerateConfig(checkpoint=str(checkpoint_2d), out=str(out), n=5, steps=2, batch_size=3, device="cpu")
    )
    assert (second.n_written, second.n_skipped) == (2, 3)
    assert (out / "sample_000000.png").read_bytes() == before
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["path"] for r in rows] == [f"sample_{i:06d}.png" for i in range(5)]
    assert int(rows[2]["seed"]) == sample_seed(0, 2)
    record = json.loads((out / "generation.json").read_text())
    assert record["checkpoint_hash"] == load_ldm(checkpoint_2d).checkpoint_hash and "finished_at" in record


def test_generate_refuses_a_folder_of_another_seed(checkpoint_2d: Path, tmp_path: Path) -> None:
    generate(GenerateConfig(checkpoint=str(checkpoint_2d), out=str(tmp_path / "g"), n=1, steps=1, device="cpu"))
    with pytest.raises(MemoScopeError, match="another checkpoint, seed"):
        generate(
            GenerateConfig(checkpoint=str(checkpoint_2d), out=str(tmp_path / "g"), n=2, steps=1, seed=5, device="cpu")
        )


def test_generate_3d_writes_nifti(tmp_path: Path) -> None:
    config = default_config(3, (16, 16, 16))
    save_ldm(tmp_path / "ck", config, build_autoencoder(config), build_unet(config))
    generate(GenerateConfig(checkpoint=str(tmp_path / "ck"), out=str(tmp_path / "g"), n=1, steps=1, device="cpu"))
    assert nib.load(tmp_path / "g" / "sample_000000.nii.gz").shape == (16, 16, 16)


def test_missing_gpu_is_a_clear_error(checkpoint_2d: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MemoScopeError, match="no CUDA GPU"):
        generate(GenerateConfig(checkpoint=str(checkpoint_2d), out=str(tmp_path / "g"), n=1, device="cuda"))


def test_offered_devices_and_precisions_are_the_ones_that_run() -> None:
    """What the app's job forms offer: every offered device resolves and every offered precision is accepted."""
    from core.common.devices import check_precision, device_choices, precision_choices, resolve_device

    offered = device_choices()
    assert offered[:2] == ["auto", "cpu"] and len(offered) == 2 + torch.cuda.device_count() + int("mps" in offered)
    for name in offered:
        device = resolve_device(name)
        for precision in precision_choices(device):
            check_precision(device, precision)
    assert precision_choices(torch.device("cpu")) == ["fp32", "bf16"]


@pytest.mark.compile
@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile needs a C++ compiler on a CPU")
def test_a_compiled_denoiser_draws_the_same_samples(checkpoint_2d: Path, tmp_path: Path) -> None:
    """``generate --compile``: the same samples as the eager sampler, up to floating point (one compilation, about
    a minute cold on 2 cores: run by ``make bench``, not ``make test``)."""
    out = tmp_path / "gen"
    config = GenerateConfig(
        checkpoint=str(checkpoint_2d), out=str(out), n=3, steps=3, batch_size=3, device="cpu", format="npy"
    )
    generate(dataclasses.replace(config, compile=True))
    assert json.loads((out / "generation.json").read_text())["compile"] is True
    written = np.stack([np.load(out / f"sample_{i:06d}.npy") for i in range(3)])
    eager = sample(load_ldm(checkpoint_2d), [sample_seed(0, i) for i in range(3)], 3)
    np.testing.assert_allclose(written.reshape(eager.shape), eager, atol=1e-4)


def test_a_generation_record_with_a_wrong_field_is_a_clear_error(tmp_path: Path) -> None:
    """A hand-edited generation.json whose n is not a number is named, not a traceback; the conditioning strata
    then read as none (they are optional), as they did before the record was typed."""
    from core.common.errors import MemoScopeError
    from core.generative.sample import RECORD, read_generation

    (tmp_path / RECORD).write_text('{"n": "many", "checkpoint_hash": "abc"}')
    with pytest.raises(MemoScopeError, match=r"generation.json: a field of the generation record"):
        read_generation(tmp_path)
