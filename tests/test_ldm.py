"""LDM checkpoints: round trip, config/weight mismatch, pickle refusal, monai-generative import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.common.errors import MemoScopeError
from core.generative.ldm import (
    build_autoencoder,
    build_unet,
    default_config,
    import_checkpoint,
    load_ldm,
    load_state_dict_file,
    save_ldm,
)

FIXTURE = Path(__file__).parent / "fixtures" / "generative_0_2_3"


@pytest.mark.parametrize("dims,size", [(2, (32, 32)), (3, (16, 16, 16))])
def test_save_load_round_trip_is_bit_exact(tmp_path: Path, dims: int, size: tuple) -> None:
    config = default_config(dims, size)
    torch.manual_seed(0)
    ae, unet = build_autoencoder(config), build_unet(config)
    digest = save_ldm(tmp_path / "ck", config, ae, unet)
    ldm = load_ldm(tmp_path / "ck")
    assert ldm.checkpoint_hash == digest and ldm.config.to_dict() == json.loads(
        (tmp_path / "ck" / "ldm.json").read_text()
    )
    for a, b in zip(unet.state_dict().values(), ldm.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert config.latent_shape == (3, *(s // 4 for s in size))


def test_config_that_disagrees_with_weights_names_the_file(tmp_path: Path) -> None:
    config = default_config(2, (32, 32))
    save_ldm(tmp_path / "ck", config, build_autoencoder(config), build_unet(config))
    data = json.loads((tmp_path / "ck" / "ldm.json").read_text())
    data["unet"]["channels"] = [32, 64, 128]
    (tmp_path / "ck" / "ldm.json").write_text(json.dumps(data))
    with pytest.raises(MemoScopeError, match="unet.safetensors: weights do not match"):
        load_ldm(tmp_path / "ck")


class Payload:
    """A class that would run code if unpickled without weights_only."""

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (Path("/tmp/memoscope-pwned"),))


def test_full_object_pickle_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = Path("/tmp/memoscope-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(MemoScopeError, match="refused: it is a pickled Python object"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_plain_pt_state_dict_imports(tmp_path: Path) -> None:
    config = default_config(2, (32, 32))
    torch.manual_seed(1)
    ae, unet = build_autoencoder(config), build_unet(config)
    torch.save({"state_dict": ae.state_dict()}, tmp_path / "ae.pt")
    torch.save(unet.state_dict(), tmp_path / "unet.pth")
    (tmp_path / "kw.json").write_text(json.dumps(config.to_dict()))
    _, record = import_checkpoint(tmp_path / "ae.pt", tmp_path / "unet.pth", tmp_path / "kw.json", tmp_path / "ck")
    assert not record["unet"]["converted"]
    assert torch.equal(
        load_ldm(tmp_path / "ck").autoencoder.state_dict()["encoder.blocks.0.conv.weight"],
        ae.state_dict()["encoder.blocks.0.conv.weight"],
    )


def test_monai_generative_checkpoint_gives_the_original_outputs(tmp_path: Path) -> None:
    """The fixture's reference outputs were computed by monai-generative 0.2.3 itself."""
    # Saved as .pt the way monai-generative users saved them, then imported.
    torch.save(load_file(FIXTURE / "autoencoder_old.safetensors"), tmp_path / "ae.pt")
    _, record = import_checkpoint(
        tmp_path / "ae.pt", FIXTURE / "unet_old.safetensors", FIXTURE / "kwargs.json", tmp_path / "ck"
    )
    assert record["autoencoder"]["converted"] and record["unet"]["converted"]
    assert record["unet"]["ignored"]  # old proj_attn tensors were never applied by the original
    ldm = load_ldm(tmp_path / "ck")
    ref = load_file(FIXTURE / "reference.safetensors")
    with torch.no_grad():
        z_mu, _ = ldm.autoencoder.encode(ref["image"])
        torch.testing.assert_close(z_mu, ref["z_mu"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ldm.autoencoder.decode(ref["z_mu"]), ref["decoded"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ldm.unet(ref["latent"], ref["timesteps"]), ref["noise_pred"], atol=1e-5, rtol=1e-5)


def test_monai_own_converter_would_change_outputs() -> None:
    """Why we convert by explicit rules: MONAI 1.6.1's load_old_state_dict alters the networks."""
    config = json.loads((FIXTURE / "kwargs.json").read_text())
    from core.generative.ldm import LDMConfig

    cfg = LDMConfig.from_dict(config)
    ae = build_autoencoder(cfg).eval()
    ae.load_old_state_dict(dict(load_file(FIXTURE / "autoencoder_old.safetensors")))
    ref = load_file(FIXTURE / "reference.safetensors")
    with torch.no_grad():
        assert (ae.decode(ref["z_mu"]) - ref["decoded"]).abs().max() > 1e-3


def test_wrong_kwargs_for_old_weights_are_refused(tmp_path: Path) -> None:
    config = json.loads((FIXTURE / "kwargs.json").read_text())
    config["unet"]["channels"] = [16, 32]
    (tmp_path / "kw.json").write_text(json.dumps(config))
    with pytest.raises(MemoScopeError, match="unet_old.safetensors"):
        import_checkpoint(
            FIXTURE / "autoencoder_old.safetensors",
            FIXTURE / "unet_old.safetensors",
            tmp_path / "kw.json",
            tmp_path / "ck",
        )
    assert not (tmp_path / "ck").exists()
