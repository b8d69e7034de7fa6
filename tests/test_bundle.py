"""MONAI bundles imported as data (issue 14): both published layouts, the refusals, and nothing executed.

Fixtures follow the two model-zoo bundles' ``configs/inference.json`` at reduced channel counts:
``brats_mri_generative_diffusion`` (monai-generative targets, ``num_channels``, ``use_checkpointing``; here with the
real monai-generative 0.2.3 weights of tests/fixtures/generative_0_2_3) and
``brain_image_synthesis_latent_diffusion_model`` (MONAI core targets, a conditional UNet with 4 concatenated
channels and cross-attention on 4 values; random weights from MONAI's own classes).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from core.common.errors import MemoScopeError
from core.generative.bundle import import_bundle, read_bundle
from core.generative.ldm import LDMConfig, build_autoencoder, build_unet, load_ldm
from core.generative.sample import GenerateConfig, generate

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "generative_0_2_3"
RUNS_CODE = ["$import torch", "$from datetime import datetime"]


def _generative_bundle(root: Path) -> Path:
    """The brats_mri_generative_diffusion layout around the monai-generative 0.2.3 fixture."""
    kwargs = json.loads((FIXTURE / "kwargs.json").read_text())
    ae, unet = dict(kwargs["autoencoder"]), dict(kwargs["unet"])
    ae["num_channels"], unet["num_channels"] = ae.pop("channels"), unet.pop("channels")
    config: dict[str, Any] = {
        "imports": RUNS_CODE,
        "bundle_root": ".",
        "model_dir": "$@bundle_root + '/models'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "spatial_dims": 2,
        "image_channels": 1,
        "latent_channels": 3,
        "latent_shape": ["@latent_channels", 8, 8],
        "autoencoder_def": {
            "_target_": "generative.networks.nets.AutoencoderKL",
            **ae,
            "spatial_dims": "@spatial_dims",
            "in_channels": "@image_channels",
            "out_channels": "@image_channels",
            "latent_channels": "@latent_channels",
            "use_checkpointing": True,
            "use_convtranspose": False,
        },
        "network_def": {
            "_target_": "generative.networks.nets.DiffusionModelUNet",
            **unet,
            "spatial_dims": "@spatial_dims",
            "in_channels": "@latent_channels",
            "out_channels": "@latent_channels",
            "use_flash_attention": True,
        },
        "load_autoencoder": "$@autoencoder_def.load_state_dict(torch.load(@load_autoencoder_path))",
        "noise_scheduler": {
            "_target_": "generative.networks.schedulers.DDIMScheduler",
            "_requires_": ["@load_autoencoder"],
            "num_train_timesteps": 1000,
            "beta_start": 0.0015,
            "beta_end": 0.0195,
            "schedule": "scaled_linear_beta",
            "clip_sample": False,
        },
        "noise": "$torch.randn([1]+@latent_shape).to(@device)",
        "inferer": {"_target_": "scripts.ldm_sampler.LDMSampler"},
        "run": ["$@saver(@generated_image[0])"],
    }
    folder = root / "brats_mri_generative_diffusion"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    torch.save(load_file(FIXTURE / "autoencoder_old.safetensors"), folder / "models" / "model_autoencoder.pt")
    torch.save({"state_dict": load_file(FIXTURE / "unet_old.safetensors")}, folder / "models" / "model.pt")
    return folder


def _conditional_bundle(root: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The brain_image_synthesis_latent_diffusion_model layout: MONAI core classes, a conditional UNet."""
    ae = {
        "_target_": "monai.networks.nets.AutoencoderKL",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 1,
        "latent_channels": 3,
        "channels": [8, 16],
        "num_res_blocks": 1,
        "norm_num_groups": 8,
        "norm_eps": 1e-06,
        "attention_levels": [False, False],
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    }
    unet = {
        "_target_": "monai.networks.nets.DiffusionModelUNet",
        "spatial_dims": 3,
        "in_channels": 7,
        "out_channels": 3,
        "channels": [16, 16],
        "num_res_blocks": 1,
        "attention_levels": [False, True],
        "norm_num_groups": 8,
        "norm_eps": 1e-06,
        "resblock_updown": True,
        "num_head_channels": [0, 16],
        "with_conditioning": True,
        "transformer_num_layers": 1,
        "cross_attention_dim": 4,
        "upcast_attention": True,
        "use_flash_attention": False,
    }
    config = {
        "imports": RUNS_CODE,
        "bundle_root": ".",
        "load_old": 1,
        "gender": 0.0,
        "age": 0.1,
        "conditioning": "$torch.tensor([[@gender, @age]]).unsqueeze(1)",
        "autoencoder_def": ae,
        "network_def": "@autoencoder_def",
        "load_autoencoder_func": "$@autoencoder_def.load_old_state_dict if bool(@load_old) else None",
        "diffusion_def": unet,
        "scheduler": {
            "_target_": "monai.networks.schedulers.DDIMScheduler",
            "beta_start": 0.0015,
            "beta_end": 0.0205,
            "num_train_timesteps": 1000,
            "schedule": "scaled_linear_beta",
            "clip_sample": False,
        },
        "noise": "$torch.randn((1, 3, 4, 6, 4)).to(@device)",
        "sampler": {"_target_": "scripts.sampler.Sampler"},
    }
    kwargs = LDMConfig(
        3,
        [8, 12, 8],
        {k: v for k, v in ae.items() if k != "_target_"},
        {k: v for k, v in unet.items() if k != "_target_"},
    )
    torch.manual_seed(0)
    ae_state, unet_state = build_autoencoder(kwargs).state_dict(), build_unet(kwargs).state_dict()
    folder = root / "brain_image_synthesis_latent_diffusion_model"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    torch.save(ae_state, folder / "models" / "autoencoder.pt")
    torch.save({"model": unet_state}, folder / "models" / "model.pt")
    return folder, ae_state, unet_state


def test_monai_generative_bundle_imports_with_the_original_outputs(tmp_path: Path) -> None:
    folder = _generative_bundle(tmp_path)
    digest, spec, record = import_bundle(folder, tmp_path / "ck")
    assert spec.layout == "monai-generative" and spec.conditioning == {}
    assert spec.config.image_size == [16, 16] and spec.config.latent_shape == (3, 8, 8)
    assert spec.config.scheduler["beta_end"] == 0.0195 and spec.config.scheduler["schedule"] == "scaled_linear_beta"
    assert "use_checkpointing" not in spec.config.autoencoder and spec.config.autoencoder["channels"] == [8, 16]
    assert spec.autoencoder_weights.name == "model_autoencoder.pt" and spec.unet_weights.name == "model.pt"
    assert record["autoencoder"]["converted"] and record["unet"]["converted"]
    assert any("num_channels" in note for note in spec.notes) and any("scale_factor" in note for note in spec.notes)
    ldm = load_ldm(tmp_path / "ck")
    assert ldm.checkpoint_hash == digest and ldm.config.provenance["import"]["bundle"] == folder.name
    ref = load_file(FIXTURE / "reference.safetensors")  # computed by monai-generative 0.2.3 itself
    with torch.no_grad():
        torch.testing.assert_close(ldm.autoencoder.decode(ref["z_mu"]), ref["decoded"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ldm.unet(ref["latent"], ref["timesteps"]), ref["noise_pred"], atol=1e-5, rtol=1e-5)
    result = generate(
        GenerateConfig(checkpoint=str(tmp_path / "ck"), n=2, out=str(tmp_path / "out"), steps=2, device="cpu")
    )
    assert result.n_written == 2


def test_conditional_monai_bundle_imports_and_generates_with_stated_values(tmp_path: Path) -> None:
    folder, ae_state, unet_state = _conditional_bundle(tmp_path)
    _, spec, record = import_bundle(folder, tmp_path / "ck")
    assert spec.layout == "monai" and spec.config.image_size == [8, 12, 8]  # 3 x 4 x 6 x 4 latent, factor 2
    assert spec.conditioning == {"concat_channels": 4, "cross_attention_dim": 4}
    assert spec.config.scheduler["beta_end"] == 0.0205
    assert not record["autoencoder"]["converted"] and spec.unet_weights.name == "model.pt"
    ldm = load_ldm(tmp_path / "ck")
    for module, state in ((ldm.autoencoder, ae_state), (ldm.unet, unet_state)):
        loaded = module.state_dict()
        assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(MemoScopeError, match="conditional LDM.*4 conditioning values"):
        generate(GenerateConfig(checkpoint=str(tmp_path / "ck"), n=1, out=str(tmp_path / "out"), steps=1, device="cpu"))
    assert not (tmp_path / "out").exists()
    values = ("gender=0", "age=uniform(0,1)", "ventricular_vol=0.2", "brain_vol=0.4")  # the bundle's four inputs
    made = generate(
        GenerateConfig(checkpoint=str(tmp_path / "ck"), n=1, out=str(tmp_path / "out"), steps=1, condition=values)
    )
    assert made.n_written == 1 and made.record["conditioning"]["names"][1] == "age"


def _edit(folder: Path, change: Any) -> None:
    path = folder / "configs" / "inference.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_an_unknown_network_class_is_refused_and_nothing_is_run(tmp_path: Path) -> None:
    folder = _generative_bundle(tmp_path)
    _edit(folder, lambda c: c["network_def"].update({"_target_": "scripts.evil.PatchedUNet"}))
    with pytest.raises(MemoScopeError, match="scripts.evil.PatchedUNet.*nothing was run"):
        read_bundle(folder)


def test_a_needed_expression_is_refused_with_its_key(tmp_path: Path) -> None:
    folder = _generative_bundle(tmp_path)
    _edit(folder, lambda c: c["autoencoder_def"].update({"num_channels": "$[8, 16]"}))
    with pytest.raises(MemoScopeError, match=r"autoencoder_def\.num_channels is a Python expression"):
        read_bundle(folder)


def test_missing_latent_shape_asks_for_the_image_size(tmp_path: Path) -> None:
    folder = _generative_bundle(tmp_path)
    _edit(folder, lambda c: [c.pop("latent_shape"), c.update({"noise": "$make_noise(@device)"})])
    with pytest.raises(MemoScopeError, match="--image-size"):
        read_bundle(folder)
    assert read_bundle(folder, image_size=[16]).config.image_size == [16, 16]


def test_ambiguous_weights_and_missing_tensors_name_the_files(tmp_path: Path) -> None:
    folder = _generative_bundle(tmp_path)
    torch.save({}, folder / "models" / "autoencoder_ema.pt")
    with pytest.raises(MemoScopeError, match=r"--autoencoder FILE"):
        read_bundle(folder)
    chosen = read_bundle(folder, autoencoder="models/model_autoencoder.pt")
    assert chosen.autoencoder_weights.name == "model_autoencoder.pt" and chosen.unet_weights.name == "model.pt"
    state = load_file(FIXTURE / "unet_old.safetensors")
    state.pop(sorted(state)[0])
    torch.save({"state_dict": state}, folder / "models" / "model.pt")
    with pytest.raises(MemoScopeError, match="model.pt: no tensor"):
        import_bundle(folder, tmp_path / "ck", autoencoder="models/model_autoencoder.pt")
    assert not (tmp_path / "ck").exists()  # nothing half written


class _Payload:
    """A pickle that would create a file when unpickled by torch.load without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_pickled_object_in_models_is_refused_without_running_it(tmp_path: Path) -> None:
    folder = _generative_bundle(tmp_path)
    marker = tmp_path / "ran"
    with open(folder / "models" / "model.pt", "wb") as handle:
        pickle.dump({"state_dict": _Payload(marker)}, handle)
    with pytest.raises(MemoScopeError, match="refused|not a PyTorch weights file"):
        import_bundle(folder, tmp_path / "ck")
    assert not marker.exists()


@pytest.mark.slow
def test_cli_imports_a_bundle(tmp_path: Path) -> None:
    folder = _generative_bundle(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "core", "import-checkpoint", "--bundle", str(folder), "--out", str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "monai-generative layout" in done.stdout and "image size [16, 16]" in done.stdout
    assert (tmp_path / "ck" / "ldm.json").is_file()
