"""The contrastive copy detector: encoder, augmentation policies, NT-Xent training, embedding cache."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import resnet18, resnet50
from monai.transforms import Compose
from pytorch_metric_learning.losses import NTXentLoss
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from core.common.devices import Precision, autocast, check_precision, device_description, resolve_device
from core.common.errors import MemoScopeError
from core.common.progress import Progress, ProgressEvent, silent
from core.common.provenance import atomic_dir, atomic_path, now_utc, sha256_json, versions
from core.detect.record import (  # noqa: F401 - re-exported: the detector's public names stay importable from here
    CONFIG_NAME,
    WEIGHTS_NAME,
    Arch,
    DetectorConfig,
    DetectorRecord,
    TrainDetectorConfig,
    detector_hash,
    is_detector_folder,
    read_detector_record,
)
from core.io.augment import augment_batch, augmentation
from core.io.load import ImageSet, load_set
from core.io.splits import check_patient_overlap

logger = logging.getLogger(__name__)


class ConvResEncoder(nn.Module):
    """The paper's 3D encoder, written once for 2D and 3D with MONAI blocks.

    Input ``(B, 1, *S)`` float32 with S divisible by 4 * 2^levels; output ``(B, embed_dim)``.
    """

    def __init__(self, spatial_dims: int, image_size: Sequence[int], embed_dim: int) -> None:
        super().__init__()
        levels = int(math.log2(min(image_size) // 4))
        if levels < 1 or any(s != image_size[0] for s in image_size):
            raise MemoScopeError(f"convres needs a cubic/square image_size of at least 8, got {image_size}.")
        norm = ("group", {"num_groups": 8})
        layers: list[nn.Module] = []
        channels_in = 1
        for level in range(levels):
            channels = min(32 * 2**level, 1024)
            layers.append(Convolution(spatial_dims, channels_in, channels, strides=2, kernel_size=3, norm=norm))
            layers.append(ResidualUnit(spatial_dims, channels, channels, subunits=2, norm=norm))
            channels_in = channels
        layers.append(Convolution(spatial_dims, channels_in, 8, kernel_size=1, conv_only=True))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * 4**spatial_dims, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PixelEncoder(nn.Module):
    """The untrained encoder: the image average-pooled to a ``side^d`` grid, flattened (no parameters).

    Correlating these is correlating blurred images as they lie; the verified call's pixel search adds the same
    pixels centred on each image's centre of mass (robust to shifts), so the two propose different candidates.
    With the verified call, alignment then decides, so a scan can skip detector training altogether.
    """

    def __init__(self, spatial_dims: int, side: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(side) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


def build_encoder(config: DetectorConfig) -> nn.Module:
    if config.arch == Arch.PIXELS:
        return PixelEncoder(config.spatial_dims, config.pixel_side)
    if config.arch == "convres":
        return ConvResEncoder(config.spatial_dims, config.image_size, config.embed_dim)
    factory = {Arch.RESNET18: resnet18, Arch.RESNET50: resnet50}[config.arch]
    return factory(
        spatial_dims=config.spatial_dims,
        n_input_channels=1,
        num_classes=config.embed_dim,
        conv1_t_stride=2,
    )


def nt_xent(model: nn.Module, batch: torch.Tensor, views: torch.Tensor, loss_fn: NTXentLoss) -> torch.Tensor:
    """NT-Xent over 2K embeddings: image i and its augmented view are the only positives."""
    embeddings = model(torch.cat([batch, views])).float()  # the loss in float32 whatever the forward ran in
    labels = torch.arange(len(batch)).repeat(2)
    return loss_fn(embeddings, labels)


@dataclass
class Detector:
    """A trained detector: config, encoder (eval mode), training history, content hash."""

    config: DetectorConfig
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    provenance: dict[str, Any] = field(default_factory=dict)
    detector_hash: str = ""

    @property
    def steps_trained(self) -> int | None:
        """Optimizer steps it was trained for (0: nothing to train; None: trained before step budgets)."""
        schedule = self.provenance.get("schedule")
        return int(schedule["steps_trained"]) if isinstance(schedule, dict) else None


@dataclass(frozen=True)
class Schedule:
    """How long a detector trains on a set and when its validation loss is taken (see :class:`DetectorConfig`).

    Attributes:
        per_epoch: optimizer steps in one pass over the training set (a last batch of one image is skipped: it
            has no negatives).
        steps: steps planned: ``epochs`` epochs or ``max_steps``, whichever is fewer.
        period: steps between two validation losses (and two learning-rate updates): one epoch, or
            ``steps // evaluations`` when that is sooner.
        patience: evaluations without a better validation loss after which training stops (0: never).
    """

    per_epoch: int
    steps: int
    period: int
    patience: int

    @property
    def periods(self) -> int:
        return math.ceil(self.steps / self.period)


def training_schedule(n_train: int, config: DetectorConfig) -> Schedule:
    """The schedule of ``config`` on ``n_train`` images: its cost is at most ``max_steps`` steps of ``batch_size``
    images, whatever ``n_train``."""
    full, rest = divmod(n_train, config.batch_size)
    per_epoch = max(1, full + (rest >= 2))
    steps = min(config.epochs * per_epoch, config.max_steps)
    period = max(1, min(per_epoch, steps // config.evaluations))
    periods = math.ceil(steps / period)
    patience = math.ceil(config.stop_after * periods) if config.stop_after > 0 else 0
    return Schedule(per_epoch, steps, period, patience)


def batch_stream(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.int64]]:
    """Shuffled batches of ``range(n)``, epoch after epoch, without end (one reshuffle per epoch; a last batch of
    one image is skipped: it has no negatives)."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) >= 2:
                yield idx


def _views(batch: torch.Tensor, transform: Compose, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch on ``device`` and its augmented views. MONAI's transforms run on the batch's device; their random
    draws stay on the CPU, so a seed augments alike everywhere."""
    if device.type == "cuda":
        batch = batch.pin_memory()  # lets the copy overlap with the work already queued on the GPU
    batch = batch.to(device, non_blocking=True)
    return batch, augment_batch(transform, batch)


def train_step(
    model: nn.Module,
    batch: torch.Tensor,
    transform: Compose,
    loss_fn: NTXentLoss,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str = Precision.FP32,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One optimizer step of NT-Xent on ``batch`` and its augmented views; returns the loss."""
    batch, views = _views(batch, transform, device)
    with autocast(device, precision):
        loss = nt_xent(model, batch, views, loss_fn)
    optimizer.zero_grad()
    if scaler is not None:  # fp16: scale the loss so small gradients do not underflow
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def validation_images(val: ImageSet, config: DetectorConfig) -> torch.Tensor:
    """The validation images the loss is taken on: all, or ``config.val_images`` evenly spaced ones."""
    n = len(val)
    keep = np.arange(n) if n <= config.val_images else np.unique(np.linspace(0, n - 1, config.val_images).round())
    return torch.from_numpy(np.ascontiguousarray(val.images[keep.astype(np.int64)]))


def validation_loss(
    model: nn.Module,
    images: torch.Tensor,
    config: DetectorConfig,
    loss_fn: NTXentLoss,
    device: torch.device,
    precision: str = Precision.FP32,
) -> float:
    """Mean NT-Xent over the validation images in order, with a fixed augmentation seed (``config.seed + 1``), so
    two evaluations differ only by the weights."""
    transform = augmentation(config.augmentation, config.spatial_dims, config.image_size)
    transform.set_random_state(seed=config.seed + 1)
    total, batches = 0.0, 0
    for start in range(0, len(images), config.batch_size):
        batch = images[start : start + config.batch_size]
        if len(batch) < 2:  # a single image has no negatives
            continue
        batch, views = _views(batch, transform, device)
        with torch.no_grad(), autocast(device, precision):
            total += float(nt_xent(model, batch, views, loss_fn))
        batches += 1
    return total / max(batches, 1)


def check_training_sets(train: ImageSet, val: ImageSet, config: DetectorConfig) -> None:
    if len(train) < 2 or len(val) < 2:
        raise MemoScopeError("detector training needs at least 2 training and 2 validation images.")
    if list(train.images.shape[2:]) != list(config.image_size):
        raise MemoScopeError(
            f"training images are {list(train.images.shape[2:])} but the detector expects {config.image_size}."
        )


def training_provenance(
    train: ImageSet, val: ImageSet, schedule: Schedule, trained: int, device: torch.device, precision: str
) -> dict[str, Any]:
    return {
        "trained_at": now_utc(),
        "device": device_description(device),
        "precision": str(precision),
        "schedule": {
            "steps_planned": schedule.steps,
            "steps_trained": trained,
            "steps_per_epoch": schedule.per_epoch,
            "evaluation_every": schedule.period,
            "stopped_early": trained < schedule.steps,
        },
        "train_set": {"source": train.source, "n": len(train), "content_hash": train.content_hash},
        "val_set": {"source": val.source, "n": len(val), "content_hash": val.content_hash},
        "versions": versions(),
    }


def start_training(
    model: nn.Module, n_train: int, config: DetectorConfig
) -> tuple[
    Schedule,
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
    NTXentLoss,
    Any,
    Iterator[npt.NDArray[np.int64]],
]:
    """What a training run steps, from ``config`` alone (one process and every Ray rank start alike): the
    schedule, Adam with its cosine learning rate over the evaluation periods, the NT-Xent loss, the seeded
    augmentation and the seeded stream of batches."""
    schedule = training_schedule(n_train, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule.periods, eta_min=config.lr_min)
    transform = augmentation(config.augmentation, config.spatial_dims, config.image_size)
    transform.set_random_state(seed=config.seed)
    batches = batch_stream(n_train, config.batch_size, np.random.default_rng(config.seed))
    return schedule, optimizer, scheduler, NTXentLoss(temperature=config.temperature), transform, batches


class TrainingOverBudget(MemoScopeError):
    """Training stopped at its second evaluation because the whole schedule, projected from the time so far and the
    second period's, would take longer than its budget (``projected`` seconds of ``steps`` planned)."""

    def __init__(self, projected: float, budget: float, steps: int) -> None:
        self.projected, self.budget, self.steps = projected, budget, steps
        super().__init__(
            f"training the detector would take about {projected / 60:.0f} min ({steps} steps), more than its "
            f"{budget / 60:g} min budget."
        )


def train_detector(
    train: ImageSet,
    val: ImageSet,
    config: DetectorConfig,
    progress: Progress = silent,
    device: torch.device | str = "cpu",
    precision: str = Precision.FP32,
    budget: float = 0.0,
) -> Detector:
    """Train the encoder on ``train`` on ``device`` for at most ``config.max_steps`` steps; keep the evaluation
    with the lowest validation NT-Xent loss.

    ``precision``: the forward passes' autocast dtype (bf16, or fp16 with a gradient scaler, on a GPU); the loss,
    the weights and the optimizer stay float32.

    The weights are initialised and the batches shuffled and augmented on the CPU from ``config.seed``, so a
    GPU starts from exactly the CPU's network and sees the same batches.

    Steps (:func:`training_schedule`): 1. seed everything; 2. each period (an epoch, or a part of a long one),
    minimise NT-Xent over shuffled batches and their augmented views; 3. take the validation loss with a fixed
    augmentation seed; 4. keep a copy of the best weights; 5. stop at the budget, or early when the validation loss
    has not improved for ``schedule.patience`` evaluations.

    ``budget``: seconds (0: none). At the second evaluation the whole schedule's time is projected: the time so
    far plus the second period's (steps and its evaluation; the first period also pays the warm-up of kernels
    and caches) for each period left. The projection ignores early stopping, which can only shorten the run.
    Over the budget, :class:`TrainingOverBudget` is raised and nothing is kept; within it, training goes on
    exactly as without a budget (the check draws no random numbers). It depends on this machine's speed and
    load at the time, so two runs near the budget can decide differently; the caller records the decision.

    One function: the periods, the validation loss, early stopping and the best-evaluation checkpoint share one
    training state; its parts (the step, the loss, the schedule, the encoder) are the helpers above.
    """
    check_training_sets(train, val, config)
    device = torch.device(device)
    precision = check_precision(device, precision)
    if not config.arch.trained:
        return untrained_detector(train, val, config, device, precision, progress)
    scaler = torch.amp.GradScaler(device.type) if precision == Precision.FP16 else None
    torch.manual_seed(config.seed)
    model = build_encoder(config).to(device)
    schedule, optimizer, scheduler, loss_fn, transform, batches = start_training(model, len(train), config)
    x_train, x_val = torch.from_numpy(train.images), validation_images(val, config)
    history: list[dict[str, float]] = []
    best_loss, best_state, best = math.inf, copy.deepcopy(model.state_dict()), -1
    done, start, lap = 0, time.perf_counter(), 0.0
    for period in range(schedule.periods):
        model.train()
        losses = [
            train_step(model, x_train[idx], transform, loss_fn, optimizer, device, precision, scaler)
            for idx in itertools.islice(batches, min(schedule.period, schedule.steps - done))
        ]
        done += len(losses)
        scheduler.step()
        model.eval()
        val_loss = validation_loss(model, x_val, config, loss_fn, device, precision)
        history.append({"epoch": period, "step": done, "train_loss": float(np.mean(losses)), "val_loss": val_loss})
        if budget > 0 and period < 2:
            elapsed = time.perf_counter() - start
            projected = elapsed + (elapsed - lap) * (schedule.periods - 2)  # at period 1: the second period's time
            if period == 1 and schedule.periods > 2 and projected > budget:  # two periods: already done
                raise TrainingOverBudget(projected, budget, schedule.steps)
            lap = elapsed
        if val_loss < best_loss:
            best_loss, best_state, best = val_loss, copy.deepcopy(model.state_dict()), period
        progress(
            ProgressEvent(
                "train detector",
                done,
                schedule.steps,
                f"step {done}/{schedule.steps}: train {history[-1]['train_loss']:.4f} val {val_loss:.4f}",
            )
        )
        if schedule.patience and period - best >= schedule.patience:
            logger.info("validation loss not better for %d evaluations: stopped at step %d", schedule.patience, done)
            progress(ProgressEvent("train detector", schedule.steps, schedule.steps, f"stopped early at step {done}"))
            break
    model.load_state_dict(best_state)
    model.cpu().eval()
    provenance = training_provenance(train, val, schedule, done, device, precision)
    return Detector(config, model, history, best, provenance)


def untrained_detector(
    train: ImageSet,
    val: ImageSet,
    config: DetectorConfig,
    device: torch.device,
    precision: str = Precision.FP32,
    progress: Progress = silent,
) -> Detector:
    """A detector with nothing to learn (``pixels``): built, not trained; its provenance says so."""
    progress(ProgressEvent("train detector", 1, 1, f"{config.arch}: nothing to train"))
    provenance = training_provenance(train, val, Schedule(0, 0, 1, 0), 0, device, precision)
    return Detector(config, build_encoder(config).eval(), [], -1, provenance)


def train_and_save(
    train: ImageSet,
    val: ImageSet,
    out: str | Path,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: Progress = silent,
    device: torch.device | str = "cpu",
    precision: str = Precision.FP32,
    ray: str = "",
    workers: int = 0,
    budget: float = 0.0,
) -> Detector:
    """Train a detector with the default config for these sets (plus ``overrides``) and save it to ``out``.

    The one place a detector config is derived from data: ``train-detector``, the app's job and
    ``scan`` (when no detector is given) all come here. With ``ray`` (``local`` or a cluster address) it trains on
    ``workers`` Ray Train workers (:func:`core.detect.train_ray.train_detector_on_ray`; ``device`` then says
    which devices the workers take). ``budget``: seconds, as :func:`train_detector` (one process only; nothing is
    saved when it is exceeded).
    """
    check_patient_overlap(train, val)
    spec = train.spec
    config = DetectorConfig.for_dims(
        spec.spatial_dims, list(spec.spatial_size), seed=seed, preprocessing=spec.to_dict(), **(overrides or {})
    )
    if ray:
        from core.detect.train_ray import train_detector_on_ray

        detector = train_detector_on_ray(train, val, config, ray, workers, progress, device, precision)
    else:
        detector = train_detector(train, val, config, progress, device, precision, budget)
    save_detector(detector, out, overwrite=overwrite)
    return detector


def train_from_sources(config: TrainDetectorConfig, progress: Progress = silent) -> Detector:
    """Load both sets with ``config.spec`` (patients must not overlap), then :func:`train_and_save`."""
    device: torch.device | str = config.device
    if config.ray:  # the workers' devices are the cluster's: an unreachable cluster is reported before data loads
        from core.common.cluster import connect

        connect(config.ray)
    else:
        device = resolve_device(config.device)  # a missing GPU or an unsupported precision, before any data loads
        check_precision(device, config.precision)
    sets = {
        role: load_set(
            getattr(config, role),
            config.spec,
            role=role,  # type: ignore[arg-type]
            slices=config.slices,
            skip_bad=config.skip_bad,
            patients=config.patients,
        )
        for role in ("train", "val")
    }
    train, val = sets["train"], sets["val"]
    return train_and_save(
        train,
        val,
        config.out,
        config.seed,
        config.overrides,
        config.overwrite,
        progress,
        device,
        config.precision,
        config.ray,
        config.workers,
    )


def save_detector(detector: Detector, folder: str | Path, overwrite: bool = False) -> str:
    """Write ``detector.json`` and ``detector.safetensors`` atomically; return the hash."""
    record = {
        "config": detector.config.to_dict(),
        "history": detector.history,
        "best_epoch": detector.best_epoch,
        "provenance": detector.provenance,
    }
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in detector.model.state_dict().items()}, tmp / WEIGHTS_NAME
        )
    detector.detector_hash = detector_hash(folder)
    return detector.detector_hash


def load_detector(folder: str | Path) -> Detector:
    """Rebuild a detector from its folder (safetensors only)."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise MemoScopeError(f"{folder}: not a detector folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}).")
    try:
        record = json.loads(config_path.read_text(encoding="utf-8"))
        config = DetectorConfig.from_dict(record["config"], source=f"{config_path} config")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MemoScopeError(f"{config_path}: invalid detector config ({exc}).") from exc
    model = build_encoder(config)
    try:
        state = load_file(folder / WEIGHTS_NAME)
    except (SafetensorError, OSError) as exc:
        raise MemoScopeError(
            f"{folder / WEIGHTS_NAME}: not a readable safetensors file ({exc}); it may be truncated."
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MemoScopeError(
            f"{folder / WEIGHTS_NAME}: weights do not match {CONFIG_NAME} ({str(exc).splitlines()[0]})."
        ) from exc
    model.eval()
    return Detector(
        config,
        model,
        record.get("history", []),
        record.get("best_epoch", -1),
        record.get("provenance", {}),
        detector_hash(folder),
    )


@dataclass(frozen=True)
class Embeddings:
    """Sample IDs and their ``(N, D)`` float32 embeddings."""

    ids: list[str]
    vectors: npt.NDArray[np.float32]


def embed(
    model: nn.Module,
    images: npt.NDArray[np.float32],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = Precision.FP32,
) -> npt.NDArray[np.float32]:
    """Embed ``(N, 1, *S)`` float32 images in [-1, 1] -> ``(N, D)`` float32 (eval, no grad; ``precision``: the
    forward pass's autocast dtype, the embeddings are float32 either way)."""
    device = torch.device(device)
    model = model.to(device).eval()
    out = []
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
            out.append(model(batch).float().cpu().numpy())
    model.cpu()
    return np.concatenate(out).astype(np.float32)


class _EmbedStage:
    """Embedding as a Ray stage (see :mod:`core.common.cluster`): the detector loads once per worker, from its
    folder (safetensors); ``run`` embeds one chunk of images."""

    def __init__(self, folder: str, device: str, batch_size: int, precision: str = Precision.FP32) -> None:
        self.model = load_detector(folder).model
        self.device = resolve_device(device)
        self.batch_size, self.precision = batch_size, precision

    def run(self, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return embed(self.model, images, self.batch_size, self.device, self.precision)


def embed_on_ray(
    folder: str | Path,
    images: npt.NDArray[np.float32],
    address: str,
    workers: int = 0,
    chunk: int = 4096,
    device: str = "auto",
    batch_size: int = 64,
    precision: str = Precision.FP32,
) -> npt.NDArray[np.float32]:
    """Embed ``images`` with the detector saved in ``folder`` on Ray workers, ``chunk`` images per task, in order
    (a memory-mapped set is read chunk by chunk on the driver)."""
    from core.common.cluster import map_batches

    chunks = (np.array(images[start : start + chunk]) for start in range(0, len(images), chunk))
    parts = list(map_batches(_EmbedStage, (str(folder), device, batch_size, precision), chunks, address, workers))
    return np.concatenate(parts).astype(np.float32)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEMOSCOPE_CACHE_DIR") or Path.home() / ".cache" / "memoscope") / "embeddings"


def embed_set(
    detector: Detector,
    images: ImageSet,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    ray: str = "",
    folder: str | Path | None = None,
    workers: int = 0,
    precision: str = Precision.FP32,
) -> tuple[Embeddings, bool]:
    """Embed an image set, reusing the on-disk cache keyed by detector hash, input content and (mixed) precision.

    Returns:
        (embeddings, whether they came from the cache).
    """
    if list(images.images.shape[2:]) != list(detector.config.image_size):
        raise MemoScopeError(
            f"{images.source}: images are {list(images.images.shape[2:])}, the detector expects "
            f"{detector.config.image_size}; use the detector's preprocessing spatial size."
        )
    keyed = {"detector": detector.detector_hash or id(detector), "images": images.content_hash}
    if Precision(precision) != Precision.FP32:  # fp32 keeps the keys of caches written before precision existed
        keyed["precision"] = str(precision)
    key = sha256_json(keyed)
    path = Path(cache_dir or default_cache_dir()) / f"{key}.npz"
    if detector.detector_hash and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                found = Embeddings(list(cached["ids"]), np.asarray(cached["vectors"]))
            if found.ids == list(images.ids) and len(found.vectors) == len(images) and np.isfinite(found.vectors).all():
                return found, True
            logger.warning("%s: a cached embedding that does not match its images; recomputing it", path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # damaged: recompute, never trust
            logger.warning("%s: an unreadable cached embedding (%s); recomputing it", path, type(exc).__name__)
    if ray and folder is not None:  # fanned out over a Ray cluster: each worker loads the saved detector
        vectors = embed_on_ray(
            folder, images.images, ray, workers, device="auto", batch_size=batch_size, precision=precision
        )
    else:
        vectors = embed(detector.model, images.images, batch_size, device, precision)
    if detector.detector_hash:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, ids=np.array(images.ids), vectors=vectors)
    return Embeddings(list(images.ids), vectors), False
