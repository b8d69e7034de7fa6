"""Training a MONAI LDM (AutoencoderKL, then the diffusion UNet in its latent space), resumable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator

from core.common.config import Config, check_range
from core.common.devices import device_description, resolve_device
from core.common.errors import MemoScopeError
from core.common.progress import Progress, ProgressEvent, silent
from core.common.provenance import atomic_path, now_utc, sha256_json, versions
from core.generative.ldm import (
    LDMConfig,
    SchedulerName,
    build_autoencoder,
    build_scheduler,
    build_unet,
    default_config,
    save_ldm,
)
from core.io.augment import AugmentPolicy, augment_batch, augmentation
from core.io.load import ImageSet

STATE_FILE = "train_state.pt"
_STATE_PARTS = ("autoencoder", "unet", "discriminator", "opt_autoencoder", "opt_unet", "opt_discriminator")


@dataclass
class TrainLDMConfig(Config):
    """LDM training settings.

    Attributes:
        ae_epochs: autoencoder epochs (L1 + KL, plus a patch adversarial loss if ``adversarial``).
        epochs: diffusion UNet epochs.
        batch_size, ae_lr, lr: Adam batch size and learning rates.
        kl_weight, adv_weight: loss weights.
        augment: random rotation (+-5 deg) and flip of each training batch (Dar et al. report
            that augmentation reduces memorization).
        save_every: also save a full checkpoint every N UNet epochs (0 = only the last), so
            memorization can be compared across training length.
        save_at: also save a checkpoint after each of these UNet epochs.
        seed: initialisation, shuffling, noise and augmentation.
        notes: free text kept in each checkpoint's provenance (e.g. a known limitation).
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda[:i]`` or ``mps``. Shuffling, noise, timesteps and
            augmentation are drawn on the CPU and moved, so a seed trains on the same batches on any device.
    """

    ae_epochs: int = 50
    epochs: int = 100
    batch_size: int = 16
    ae_lr: float = 5e-4
    lr: float = 2.5e-4
    kl_weight: float = 1e-6
    adversarial: bool = False
    adv_weight: float = 0.01
    augment: bool = False
    save_every: int = 0
    save_at: tuple[int, ...] = ()
    seed: int = 0
    notes: tuple[str, ...] = ()
    device: str = "auto"

    def validate(self) -> None:
        for name in ("ae_epochs", "save_every", "seed"):
            check_range(name, getattr(self, name), 0)
        check_range("epochs", self.epochs, 0)
        check_range("batch_size", self.batch_size, 1)
        for name in ("ae_lr", "lr"):
            check_range(name, getattr(self, name), 1e-12)
        for epoch in self.save_at:
            check_range("save_at", epoch, 1, self.epochs)

    def saves_after(self, done: int) -> bool:
        """Whether a snapshot checkpoint is written after UNet epoch ``done`` (the last is always)."""
        periodic = bool(self.save_every) and done % self.save_every == 0
        return done < self.epochs and (periodic or done in self.save_at)


def _batches(n: int, batch_size: int, seed: int, phase: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, phase, epoch]).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _seed_epoch(seed: int, phase: int, epoch: int) -> None:
    """Seed torch's global RNG per epoch (the autoencoder's latent sampling draws from it), so a
    resumed run continues exactly as an uninterrupted one."""
    torch.manual_seed(int(np.random.SeedSequence([seed, phase, epoch]).generate_state(1)[0]))


def _maybe_augment(
    x: torch.Tensor, cfg: TrainLDMConfig, dims: int, size: list[int], phase: int, epoch: int
) -> torch.Tensor:
    if not cfg.augment:
        return x
    transform = augmentation(AugmentPolicy.PAPER, dims, size)
    transform.set_random_state(seed=(cfg.seed * 1_000_003 + phase * 10_007 + epoch) % 2**32)
    return augment_batch(transform, x)


def _kl(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=dims)
    return kl.mean()


def train_ldm(
    images: ImageSet,
    out: str | Path,
    cfg: TrainLDMConfig,
    ldm_config: LDMConfig | None = None,
    progress: Progress = silent,
) -> Path:
    """Train an LDM on ``images`` and write checkpoint folders under ``out``.

    Steps: 1. autoencoder for ``ae_epochs``; 2. scale factor = 1 / std of training latents;
    3. UNet for ``epochs`` with the DDPM loss on scaled latents (noise, or velocity for ``v_prediction``);
    4. after every epoch, a resume state (``train_state.pt``, plain tensors only); checkpoints
    ``epoch-XXXX`` every ``save_every`` UNet epochs and ``last`` at the end.

    Returns:
        The ``last`` checkpoint folder.

    One function: the autoencoder and UNet phases share the optimizers, the schedule and the resumable state saved
    every epoch.
    """
    out = Path(out)
    dims = images.spec.spatial_dims
    size = list(images.spec.spatial_size)
    config = ldm_config or default_config(dims, tuple(size))
    if list(config.image_size) != size:
        raise MemoScopeError(f"LDM image_size {config.image_size} != preprocessing size {size}.")
    factor = 2 ** (len(config.autoencoder["channels"]) - 1)
    if any(s % (factor * 2 ** (len(config.unet["channels"]) - 1)) for s in size):
        raise MemoScopeError(f"image size {size} must be divisible by the networks' total downsampling.")
    device = resolve_device(cfg.device)  # checked before any work
    torch.manual_seed(cfg.seed)
    ae, unet = build_autoencoder(config).to(device), build_unet(config).to(device)
    disc = (
        PatchDiscriminator(spatial_dims=dims, in_channels=1, channels=32, num_layers_d=2).to(device)
        if cfg.adversarial
        else None
    )
    opt_ae = torch.optim.Adam(ae.parameters(), lr=cfg.ae_lr)
    opt_unet = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    opt_disc = torch.optim.Adam(disc.parameters(), lr=cfg.ae_lr) if disc else None
    scheduler = build_scheduler(config, SchedulerName.DDPM)
    state: dict[str, Any] = {"phase": 0, "epoch": 0, "scale_factor": 1.0, "history": []}
    state_path = out / STATE_FILE
    if state_path.is_file():
        state = _load_state(state_path, ae, unet, disc, opt_ae, opt_unet, opt_disc)
    x_all = torch.from_numpy(images.images)
    adv_loss = PatchAdversarialLoss(criterion="least_squares")

    # 1. autoencoder
    while state["phase"] == 0 and state["epoch"] < cfg.ae_epochs:
        epoch = state["epoch"]
        _seed_epoch(cfg.seed, 0, epoch)
        ae.train()
        losses = []
        for idx in _batches(len(x_all), cfg.batch_size, cfg.seed, 0, epoch):
            x = _maybe_augment(x_all[idx].to(device), cfg, dims, size, 0, epoch)
            recon, z_mu, z_sigma = ae(x)
            loss = F.l1_loss(recon, x) + cfg.kl_weight * _kl(z_mu, z_sigma)
            if disc is not None and opt_disc is not None:
                loss = loss + cfg.adv_weight * adv_loss(disc(recon)[-1], target_is_real=True, for_discriminator=False)
            opt_ae.zero_grad()
            loss.backward()
            opt_ae.step()
            if disc is not None and opt_disc is not None:
                d_loss = 0.5 * (
                    adv_loss(disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                    + adv_loss(disc(x)[-1], target_is_real=True, for_discriminator=True)
                )
                opt_disc.zero_grad()
                d_loss.backward()
                opt_disc.step()
            losses.append(float(loss.detach()))
        _end_epoch(state, "autoencoder", epoch, float(np.mean(losses)), cfg, progress)
        if state["epoch"] >= cfg.ae_epochs:
            state.update(phase=1, epoch=0, scale_factor=_scale_factor(ae, x_all, cfg.batch_size, device))
        _save_state(state_path, state, ae, unet, disc, opt_ae, opt_unet, opt_disc)
    if state["phase"] == 0:
        state.update(phase=1, epoch=0, scale_factor=_scale_factor(ae, x_all, cfg.batch_size, device))
    config.scale_factor = float(state["scale_factor"])

    # 2-3. diffusion UNet in the frozen autoencoder's latent space
    velocity = scheduler.prediction_type == "v_prediction"  # else epsilon: the noise is the target
    ae.eval()
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        _seed_epoch(cfg.seed, 1, epoch)
        unet.train()
        losses = []
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        for idx in _batches(len(x_all), cfg.batch_size, cfg.seed, 1, epoch):
            x = _maybe_augment(x_all[idx].to(device), cfg, dims, size, 1, epoch)
            noise = torch.randn((len(idx), *config.latent_shape), generator=gen).to(device)
            t = torch.randint(0, scheduler.num_train_timesteps, (len(idx),), generator=gen).to(device)
            with torch.no_grad():
                latents = ae.encode_stage_2_inputs(x) * config.scale_factor
            noisy = scheduler.add_noise(original_samples=latents, noise=noise, timesteps=t)
            target = scheduler.get_velocity(latents, noise, t) if velocity else noise
            loss = F.mse_loss(unet(noisy, timesteps=t).float(), target.float())
            opt_unet.zero_grad()
            loss.backward()
            opt_unet.step()
            losses.append(float(loss.detach()))
        _end_epoch(state, "unet", epoch, float(np.mean(losses)), cfg, progress)
        done = state["epoch"]
        if cfg.saves_after(done):
            _save_checkpoint(out / f"epoch-{done:04d}", config, ae, unet, images, cfg, done, state, device)
        _save_state(state_path, state, ae, unet, disc, opt_ae, opt_unet, opt_disc)
    last = out / "last"
    _save_checkpoint(last, config, ae, unet, images, cfg, cfg.epochs, state, device)
    return last


def _scale_factor(ae: torch.nn.Module, x_all: torch.Tensor, batch_size: int, device: torch.device) -> float:
    with torch.no_grad():
        z = torch.cat(
            [
                ae.encode_stage_2_inputs(x_all[i : i + batch_size].to(device)).cpu()  # type: ignore[operator]
                for i in range(0, len(x_all), batch_size)
            ]
        )
    std = float(z.std())
    return 1.0 / std if std > 0 and math.isfinite(std) else 1.0


def _end_epoch(
    state: dict[str, Any], phase: str, epoch: int, loss: float, cfg: TrainLDMConfig, progress: Progress
) -> None:
    state["history"].append({"phase": phase, "epoch": epoch + 1, "loss": loss})
    state["epoch"] = epoch + 1
    total = cfg.ae_epochs if phase == "autoencoder" else cfg.epochs
    progress(ProgressEvent(phase, epoch + 1, total, f"epoch {epoch + 1}/{total}: loss {loss:.4f}"))


def _save_checkpoint(
    folder: Path,
    config: LDMConfig,
    ae: torch.nn.Module,
    unet: torch.nn.Module,
    images: ImageSet,
    cfg: TrainLDMConfig,
    epoch: int,
    state: dict[str, Any],
    device: torch.device,
) -> None:
    config.preprocessing = images.spec.to_dict()
    config.provenance = {
        "data": {
            "source": images.source,
            "n_images": len(images),
            "n_patients": len(set(images.patient_ids)),
            "content_hash": images.content_hash,
        },
        # The split, without patient identifiers: which rows were used and a hash of the patient set.
        "split": {
            "role": "train",
            "patients_hash": sha256_json(sorted(set(images.patient_ids))),
            "ids_hash": sha256_json(list(images.ids)),
        },
        "training": {
            **{k: v for k, v in asdict(cfg).items() if k != "notes"},
            "unet_epochs_done": epoch,
            "device_used": device_description(device),
        },
        "notes": list(cfg.notes),
        "history": list(state["history"]),
        "versions": versions(),
        "saved_at": now_utc(),
    }
    save_ldm(folder, config, ae, unet, overwrite=True)


def _save_state(path: Path, state: dict[str, Any], *modules: Any) -> None:
    payload = {
        "meta": state,
        **{n: m.state_dict() for n, m in zip(_STATE_PARTS, modules, strict=True) if m is not None},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_state(path: Path, *modules: Any) -> dict[str, Any]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for name, module in zip(_STATE_PARTS, modules, strict=True):
        if module is not None and name in payload:
            module.load_state_dict(payload[name])
    return dict(payload["meta"])
