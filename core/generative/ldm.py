"""LDM checkpoints: the ``ldm.json`` + safetensors folder format, building MONAI networks, imports."""

from __future__ import annotations

import json
import logging
import math
import pickle
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.common.config import Config
from core.common.errors import MemoScopeError
from core.common.provenance import atomic_dir, now_utc, sha256_file, sha256_files, versions

if TYPE_CHECKING:  # torch and MONAI load when networks are built, not when a checkpoint's config is read
    import torch
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
    from monai.networks.schedulers import Scheduler

logger = logging.getLogger(__name__)
CONFIG_NAME = "ldm.json"
AE_WEIGHTS = "autoencoder.safetensors"
UNET_WEIGHTS = "unet.safetensors"
MAX_VOXELS = 512**3  # a 512^3 volume or a 11,585^2 slice: beyond any LDM's samples, and beyond memory to compare
CHECKSUMS = "checksums.json"  # SHA-256 of the weights, checked on every load (not part of the checkpoint hash)


class SchedulerName(StrEnum):
    DDPM = "ddpm"
    DDIM = "ddim"


DEFAULT_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "schedule": "scaled_linear_beta",
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "clip_sample": False,
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class TrainingRecord:
    """How a checkpoint was trained, as its ``ldm.json`` provenance says (MemoScope's trainer writes it; an
    imported bundle has none, and every field is then ``None`` or empty). The one reader of those keys.

    Attributes:
        unet_epochs: UNet epochs done when the checkpoint was saved.
        augment: whether the training images were augmented.
        seed: the training seed.
        device: where it was trained.
        notes: the trainer's free-text notes (a known limitation, the demo's recipe).
        unet_losses: the UNet's loss per epoch, in order.
    """

    unet_epochs: int | None = None
    augment: bool | None = None
    seed: int | None = None
    device: str | None = None
    notes: tuple[str, ...] = ()
    unet_losses: tuple[float, ...] = ()

    @classmethod
    def of(cls, provenance: dict[str, Any]) -> TrainingRecord:
        training = provenance.get("training") or {}
        history = provenance.get("history") or []

        def optional(key: str, kind: Any) -> Any:
            value = training.get(key)
            return None if value is None else kind(value)

        return cls(
            unet_epochs=optional("unet_epochs_done", int),
            augment=optional("augment", bool),
            seed=optional("seed", int),
            device=optional("device_used", str),
            notes=tuple(str(n) for n in provenance.get("notes") or ()),
            unet_losses=tuple(float(h["loss"]) for h in history if h.get("phase") == "unet" and "loss" in h),
        )


@dataclass
class LDMConfig(Config):
    """Everything needed to rebuild an LDM from its folder (diffusers-style config capture).

    Attributes:
        spatial_dims: 2 or 3.
        image_size: image size (H, W[, D]) the autoencoder was trained on.
        autoencoder: keyword arguments of ``monai.networks.nets.AutoencoderKL``.
        unet: keyword arguments of ``monai.networks.nets.DiffusionModelUNet``.
        scheduler: DDPM/DDIM schedule keywords (shared by training and sampling).
        scale_factor: latent scaling (1 / std of training latents).
        preprocessing: the :class:`core.io.preprocessing.PreprocessSpec` of the training data.
        provenance: data, split, epochs, augmentation, seed, versions, time.
    """

    spatial_dims: int
    image_size: list[int]
    autoencoder: dict[str, Any]
    unet: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULER))
    scale_factor: float = 1.0
    preprocessing: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def training(self) -> TrainingRecord:
        """How the checkpoint was trained (from :attr:`provenance`)."""
        return TrainingRecord.of(self.provenance)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """``(C, *spatial)`` of the latent the UNet denoises."""
        factor = 2 ** (len(self.autoencoder["channels"]) - 1)
        return (int(self.autoencoder["latent_channels"]), *(s // factor for s in self.image_size))

    @property
    def conditioning(self) -> dict[str, int]:
        """How the UNet is conditioned beyond the latent: channels concatenated to it, cross-attention size; empty
        for an unconditional LDM (the only kind MemoScope generates from)."""
        found: dict[str, int] = {}
        latent = int(self.autoencoder.get("latent_channels", 3))
        if int(self.unet.get("in_channels", latent)) > latent:
            found["concat_channels"] = int(self.unet["in_channels"]) - latent
        if self.unet.get("with_conditioning"):
            found["cross_attention_dim"] = int(self.unet.get("cross_attention_dim") or 0)
        return found

    def validate(self) -> None:
        if not isinstance(self.image_size, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 4 for v in self.image_size
        ):
            raise MemoScopeError(f"image_size {self.image_size!r} must be a list of integers of at least 4.")
        for part in ("autoencoder", "unet", "scheduler"):
            if not isinstance(getattr(self, part), dict):
                raise MemoScopeError(f"{part} must be a JSON object of keyword arguments.")
        if math.prod(self.image_size) > MAX_VOXELS:
            raise MemoScopeError(
                f"image_size {self.image_size}: {math.prod(self.image_size):,} pixels per sample, above the "
                f"{MAX_VOXELS:,} MemoScope generates and compares (a typo, or an image size in another unit?)."
            )
        if self.spatial_dims not in (2, 3) or len(self.image_size) != self.spatial_dims:
            raise MemoScopeError(f"spatial_dims {self.spatial_dims} and image_size {self.image_size} disagree.")
        for part in ("autoencoder", "unet"):
            if int(getattr(self, part).get("spatial_dims", self.spatial_dims)) != self.spatial_dims:
                raise MemoScopeError(f"{part}.spatial_dims differs from spatial_dims.")
        for part in ("autoencoder", "unet", "scheduler"):
            for key, value in getattr(self, part).items():
                _check_keyword(f"{part}.{key}", value)
        scale = self.scale_factor
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not (math.isfinite(scale) and scale > 0):
            raise MemoScopeError(f"scale_factor {scale!r} must be a finite number above 0 (1 / std of the latents).")
        _check_schedule(self.scheduler)


def _check_keyword(name: str, value: Any) -> None:
    """A network or scheduler keyword is plain data: a number (finite), a string, a boolean, null, or a list of
    these. A nested object (a ``_target_`` to build, as in ``norm_eps: {"_target_": ...}``) is never built."""
    if isinstance(value, dict):
        raise MemoScopeError(
            f"{name}: a nested object ({sorted(value)[:3]}) is not a keyword value; MemoScope never builds objects "
            "named in a config. Give a number, string, boolean or list."
        )
    if isinstance(value, list | tuple):
        for item in value:
            _check_keyword(name, item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise MemoScopeError(f"{name}: {value!r} is not a finite number.")
    elif value is not None and not isinstance(value, bool | int | float | str):
        raise MemoScopeError(f"{name}: {type(value).__name__} is not a keyword value.")


MONAI_SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")  # MONAI 1.6's NoiseSchedules


def _check_schedule(scheduler: dict[str, Any]) -> None:
    """The diffusion schedule's own numbers, before any network is built: what a sampler would otherwise crash on
    (0 timesteps) or run through to black images (NaN betas)."""
    steps = scheduler.get("num_train_timesteps", DEFAULT_SCHEDULER["num_train_timesteps"])
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise MemoScopeError(f"scheduler.num_train_timesteps {steps!r} must be a whole number of at least 1.")
    schedule = scheduler.get("schedule", "linear_beta")
    if schedule not in MONAI_SCHEDULES:  # a newer MONAI may know more: ask it (importing it only then)
        from monai.networks.schedulers.scheduler import NoiseSchedules

        if not isinstance(schedule, str) or schedule not in NoiseSchedules:
            known = ", ".join(sorted(NoiseSchedules.names))
            raise MemoScopeError(f"scheduler.schedule {schedule!r} is not a noise schedule; use one of {known}.")
    start, end = scheduler.get("beta_start", 1e-4), scheduler.get("beta_end", 2e-2)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (start, end))
    if not numbers or not 0.0 < float(start) < float(end) < 1.0:
        raise MemoScopeError(f"scheduler beta_start {start!r} and beta_end {end!r} must satisfy 0 < start < end < 1.")
    if scheduler.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction", "sample"):
        raise MemoScopeError(
            f"scheduler.prediction_type {scheduler.get('prediction_type')!r} must be epsilon, v_prediction or sample."
        )


def default_config(spatial_dims: int, image_size: tuple[int, ...]) -> LDMConfig:
    """A small LDM that trains on a CPU in minutes (sizes measured in docs/platform notes).

    2D: AE channels (32, 64, 64), latent 3 x H/4 x W/4, UNet (32, 64, 64) with attention on
    the two lower levels. 3D: AE (16, 32, 32), attention on the lowest UNet level only.
    """
    if spatial_dims == 2:
        ae_channels, attention = [32, 64, 64], [False, True, True]
    elif spatial_dims == 3:
        ae_channels, attention = [16, 32, 32], [False, False, True]
    else:
        raise MemoScopeError(f"spatial_dims {spatial_dims} must be 2 or 3.")
    autoencoder = {
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "out_channels": 1,
        "channels": ae_channels,
        "latent_channels": 3,
        "num_res_blocks": 1,
        "norm_num_groups": 16,
        "attention_levels": [False] * len(ae_channels),
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    }
    unet = {
        "spatial_dims": spatial_dims,
        "in_channels": 3,
        "out_channels": 3,
        "channels": [32, 64, 64],
        "attention_levels": attention,
        "num_res_blocks": 1,
        "num_head_channels": 32,
        "norm_num_groups": 16,
    }
    return LDMConfig(spatial_dims, list(image_size), autoencoder, unet)


def networks_config(path: str | Path, spatial_dims: int, image_size: tuple[int, ...]) -> LDMConfig:
    """The default config with network keywords overridden from a JSON file.

    The file holds ``{"autoencoder": {...}, "unet": {...}, "scheduler": {...}}`` (any may be left out); each
    is merged over :func:`default_config`, and the networks and the scheduler are built once to check it
    (``"scheduler": {"prediction_type": "v_prediction"}`` trains the UNet to predict velocity instead of noise).
    """
    path = Path(path)
    try:
        overrides = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MemoScopeError(f"{path}: cannot read the networks JSON ({exc}).") from exc
    if not isinstance(overrides, dict) or set(overrides) - {"autoencoder", "unet", "scheduler"}:
        raise MemoScopeError(
            f'{path}: expected {{"autoencoder": {{...}}, "unet": {{...}}, "scheduler": {{...}}}}, got keys '
            f"{sorted(overrides) if isinstance(overrides, dict) else type(overrides).__name__}."
        )
    config = default_config(spatial_dims, image_size)
    config.autoencoder.update(overrides.get("autoencoder", {}))
    config.unet.update(overrides.get("unet", {}))
    config.scheduler.update(overrides.get("scheduler", {}))
    try:
        build_autoencoder(config), build_unet(config), build_scheduler(config)
    except (TypeError, ValueError) as exc:
        raise MemoScopeError(f"{path}: these network or scheduler keywords do not build ({exc}).") from exc
    return config


def build_networks(config: LDMConfig, source: str) -> tuple[AutoencoderKL, DiffusionModelUNet]:
    """Both networks of ``config``; keywords MONAI refuses are reported against ``source``."""
    try:
        return build_autoencoder(config), build_unet(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise MemoScopeError(f"{source}: the network keywords do not build a MONAI network ({exc}).") from exc


def build_autoencoder(config: LDMConfig) -> AutoencoderKL:
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL(**{"spatial_dims": config.spatial_dims, **config.autoencoder})


def build_unet(config: LDMConfig) -> DiffusionModelUNet:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(**{"spatial_dims": config.spatial_dims, **config.unet})


def build_scheduler(config: LDMConfig, name: SchedulerName = SchedulerName.DDPM) -> Scheduler:
    """The training-time DDPM schedule, or a DDIM sampler over the same betas."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    kwargs = dict(config.scheduler)
    if name == "ddpm":
        return DDPMScheduler(**kwargs)
    if name == "ddim":
        return DDIMScheduler(**kwargs)
    raise MemoScopeError(f"scheduler {name!r} must be 'ddpm' or 'ddim'.")


@dataclass
class LDM:
    """A loaded checkpoint: config, networks (eval mode) and the folder's content hash."""

    config: LDMConfig
    autoencoder: AutoencoderKL
    unet: DiffusionModelUNet
    checkpoint_hash: str
    path: Path | None = None


def checkpoint_hash(folder: str | Path) -> str:
    """Hash of a checkpoint folder's config and weights."""
    folder = Path(folder)
    return sha256_files([folder / CONFIG_NAME, folder / AE_WEIGHTS, folder / UNET_WEIGHTS])


def list_checkpoints(root: str | Path) -> list[str]:
    """The checkpoint folders directly under ``root`` (those holding an ``ldm.json``), sorted."""
    return sorted(str(p.parent) for p in Path(root).glob(f"*/{CONFIG_NAME}"))


def read_config(folder: str | Path) -> LDMConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise MemoScopeError(
            f"{folder}: not an LDM checkpoint (no {CONFIG_NAME}); import plain weights with "
            "`python -m core import-checkpoint`."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MemoScopeError(f"{path}: invalid JSON ({exc}).") from exc
    return LDMConfig.from_dict(data, str(path))


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()
        raise MemoScopeError(
            f"{source}: weights do not match the network described by the config "
            f"({'; '.join(line.strip() for line in detail[1:4])}). Use the config saved with "
            "these weights."
        ) from exc


def save_ldm(
    folder: str | Path,
    config: LDMConfig,
    autoencoder: torch.nn.Module,
    unet: torch.nn.Module,
    overwrite: bool = False,
) -> str:
    """Write ``ldm.json`` and both safetensors files atomically; return the checkpoint hash."""
    from safetensors.torch import save_file

    with atomic_dir(folder, overwrite=overwrite) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file({k: v.detach().cpu().contiguous() for k, v in autoencoder.state_dict().items()}, tmp / AE_WEIGHTS)
        save_file({k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}, tmp / UNET_WEIGHTS)
        write_checksums(tmp)
    return checkpoint_hash(folder)


def write_checksums(folder: str | Path) -> None:
    """Record the SHA-256 of each weights file beside it, so a damaged copy is caught when loaded."""
    folder = Path(folder)
    sums = {name: sha256_file(folder / name) for name in (AE_WEIGHTS, UNET_WEIGHTS)}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def verify_checksums(folder: str | Path) -> bool:
    """Check the weights against ``checksums.json``; False when the folder has none (an older checkpoint)."""
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.is_file():
        return False
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MemoScopeError(f"{path}: not valid JSON ({exc}).") from exc
    for name, digest in sums.items():
        if sha256_file(folder / name) != digest:
            raise MemoScopeError(
                f"{folder / name}: its bytes differ from {CHECKSUMS} (a damaged or altered copy); copy the checkpoint "
                "again from its source."
            )
    return True


def load_ldm(folder: str | Path, device: str | torch.device = "cpu") -> LDM:
    """Rebuild an LDM from its folder; weights only through safetensors."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_config(folder)
    if not verify_checksums(folder):
        logger.warning("%s: no %s, so its weights cannot be checked for damage", folder, CHECKSUMS)
    autoencoder, unet = build_networks(config, str(folder / CONFIG_NAME))
    for module, name in ((autoencoder, AE_WEIGHTS), (unet, UNET_WEIGHTS)):
        path = folder / name
        if not path.is_file():
            raise MemoScopeError(f"{folder}: {name} is missing.")
        try:
            state = load_file(path)
        except Exception as exc:  # safetensors raises SafetensorError on damaged headers
            raise MemoScopeError(f"{path}: unreadable safetensors file ({exc}).") from exc
        broken = [k for k, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
        if broken:
            raise MemoScopeError(
                f"{path}: {len(broken)} weight tensor(s) hold NaN or Inf (e.g. {broken[0]}); every sample would be "
                "blank. Use a checkpoint saved before training diverged."
            )
        _load_into(module, state, str(path))
    autoencoder.to(device).eval()
    unet.to(device).eval()
    return LDM(config, autoencoder, unet, checkpoint_hash(folder), folder)


# ---------------------------------------------------------------------------------------------
# Import of plain state dicts, including the old monai-generative key layout
# ---------------------------------------------------------------------------------------------

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "autoencoder", "unet", "diffusion")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors, or .pt/.pth with ``torch.load(weights_only=True)``.

    A file that pickles Python objects (a whole model) is refused; nothing in it is executed.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MemoScopeError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as exc:
            raise MemoScopeError(
                f"{path}: not a valid safetensors file ({exc}); it may be truncated, or another format under this "
                "name (a pickled .pt file must keep its .pt name to be read safely)."
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (KeyError, ValueError) as exc:  # a text or other file fails inside the unpickler
        raise MemoScopeError(f"{path}: not a PyTorch weights file ({type(exc).__name__}: {exc}).") from exc
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise MemoScopeError(
            f"{path}: refused: it is a pickled Python object, not a plain state dict ({reason}). "
            "Nothing in it was executed. In the environment that made it, save "
            "`model.state_dict()` with torch.save or safetensors and import that."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise MemoScopeError(f"{path}: unreadable weights file ({exc}).") from exc
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapped = [k for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)]
        if len(wrapped) != 1:
            raise MemoScopeError(
                f"{path}: not a state dict of tensors (keys {sorted(map(str, obj))[:6]}); save "
                "`model.state_dict()` alone."
            )
        obj = obj[wrapped[0]]
    if not isinstance(obj, dict) or not obj:
        raise MemoScopeError(f"{path}: holds no tensors; save `model.state_dict()`.")
    return obj


@dataclass
class ConversionReport:
    """What an import changed: whether the old layout was converted, and how."""

    converted: bool
    renamed: int = 0
    filled: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _old_name(key: str) -> str | None:
    """The monai-generative 0.2.3 name of a MONAI-core key; ``None`` for a projection to fill."""
    if ".attn.to_" in key:
        return key.replace(".attn.to_", ".to_")
    if "transformer_blocks" in key and ".out_proj." in key:
        return key.replace(".out_proj.", ".to_out.0.")
    if ".attn.out_proj." in key:
        # Old attention blocks define proj_attn but their forward never calls it, so the
        # faithful new projection is the identity.
        return None
    if "postconv" in key:
        return key.replace("postconv", "conv")
    return key


def convert_generative_state_dict(
    state: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    source: str,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename a monai-generative 0.2.3 state dict to MONAI core's layout, by explicit rules.

    MONAI's own ``load_old_state_dict`` is not used: checked against outputs of the real
    monai-generative 0.2.3 (tests/fixtures/generative_0_2_3), MONAI 1.6.1's converter turns
    the never-applied ``proj_attn`` of both networks into an applied ``out_proj`` (1.5.2 does
    so for the UNet), so converted outputs differ from the originals by up to 0.12.

    Args:
        state: the old state dict.
        target: the new network's state dict (names, shapes, dtypes).

    Returns:
        (new state dict, report); every old tensor is used or listed as ignored.
    """
    import torch

    new_state: dict[str, torch.Tensor] = {}
    report = ConversionReport(converted=True)
    used: set[str] = set()
    for key, reference in target.items():
        old_key = _old_name(key)
        if old_key is None:
            eye = torch.eye(reference.shape[0], dtype=reference.dtype) if reference.ndim == 2 else None
            new_state[key] = eye if eye is not None else torch.zeros_like(reference)
            report.filled.append(key)
            continue
        if old_key not in state:
            raise MemoScopeError(
                f"{source}: no tensor {old_key!r} for {key!r}; the weights match neither the MONAI "
                "nor the monai-generative layout of the configured network; check its kwargs."
            )
        if state[old_key].shape != reference.shape:
            raise MemoScopeError(
                f"{source}: {old_key} has shape {tuple(state[old_key].shape)}, the configured "
                f"network needs {tuple(reference.shape)}; check the network kwargs."
            )
        new_state[key] = state[old_key]
        used.add(old_key)
        report.renamed += old_key != key
    leftover = sorted(set(state) - used)
    report.ignored = [k for k in leftover if ".proj_attn." in k]
    unexplained = sorted(set(leftover) - set(report.ignored))
    if unexplained:
        raise MemoScopeError(
            f"{source}: {len(unexplained)} tensors have no place in the configured network "
            f"(e.g. {unexplained[:3]}); the config probably describes another network."
        )
    return new_state, report


def convert_and_load(
    module: AutoencoderKL | DiffusionModelUNet, state: dict[str, torch.Tensor], source: str
) -> ConversionReport:
    """Load ``state`` into ``module``, converting the monai-generative layout when its keys differ."""

    target = module.state_dict()
    if set(state) == set(target) or set(state) <= set(target):
        _load_into(module, state, source)  # a missing key raises with the config hint
        return ConversionReport(converted=False)
    new_state, report = convert_generative_state_dict(state, target, source)
    _load_into(module, new_state, source)
    return report


def import_checkpoint(
    autoencoder_path: str | Path,
    unet_path: str | Path,
    config_path: str | Path,
    out: str | Path,
    overwrite: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Turn plain state dicts plus a kwargs JSON into a MemoScope checkpoint folder.

    Returns:
        (checkpoint hash, import record stored in the config's provenance).
    """
    config_path = Path(config_path)
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MemoScopeError(f"{config_path}: cannot read the kwargs JSON ({exc}).") from exc
    config = LDMConfig.from_dict(data, str(config_path))
    autoencoder, unet = build_networks(config, str(config_path))
    record: dict[str, Any] = {"imported_at": now_utc(), "versions": versions()}
    for module, path, name in ((autoencoder, autoencoder_path, "autoencoder"), (unet, unet_path, "unet")):
        report = convert_and_load(module, load_state_dict_file(path), str(path))
        record[name] = {"source": Path(path).name, "sha256": sha256_files([path]), **asdict(report)}
    config.provenance = {**config.provenance, "import": record}
    return save_ldm(out, config, autoencoder, unet, overwrite=overwrite), record
