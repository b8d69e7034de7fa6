"""What a detector is without its network: configuration, training job, and the saved record (no torch).

The Overview, the Detector page and the job queue read these; :mod:`core.detect.detector` builds, trains and runs
the encoder itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from core.common.config import Config, check_range
from core.common.devices import Precision
from core.common.errors import MemoScopeError
from core.common.provenance import sha256_files
from core.io.augment import AugmentPolicy
from core.io.load import SliceAxis
from core.io.preprocessing import PreprocessSpec


class Arch(StrEnum):
    RESNET18 = "resnet18"
    RESNET50 = "resnet50"
    CONVRES = "convres"
    PIXELS = "pixels"  # no training: blurred, downsampled pixels (the scan's --detector none)

    @property
    def trained(self) -> bool:
        return self is not Arch.PIXELS


PIXEL_GRID = {2: 16, 3: 8}  # the pixels encoder's default grid: as coarse as the verification's pixel retrieval
CONFIG_NAME = "detector.json"
WEIGHTS_NAME = "detector.safetensors"


@dataclass(frozen=True)
class DetectorConfig(Config):
    """Detector hyper-parameters (defaults follow Dar et al. where they fit a CPU).

    Attributes:
        spatial_dims: 2 or 3.
        image_size: input size (H, W[, D]).
        arch: ``resnet18``/``resnet50`` (MONAI ResNet, 1 input channel, last layer -> embed_dim;
            the paper's 2D choice is ResNet-50) or ``convres`` (the paper's 3D encoder: stride-2
            conv + residual GroupNorm blocks down to a 4-voxel grid, 1x1 conv to 8 channels,
            Linear -> 128, ReLU, Dropout 0.5, Linear -> embed_dim), or ``pixels``: no network to train, the
            image average-pooled to a ``side^d`` grid (embed_dim = side^d: 16 x 16 in 2D, 8^3 in 3D); the scan's
            ``--detector none``, for sets too large to train a detector on (verification still decides).
        embed_dim: embedding size (paper: 128 in 2D, 32 in 3D).
        augmentation: ``paper`` (rotation +-5 deg and a flip, p = 0.5) or ``strong`` (adds
            translation, intensity scale/shift, gamma, blur and noise).
        temperature: NT-Xent temperature (0.07).
        epochs, batch_size, lr, lr_min: Adam with cosine annealing from lr to lr_min.
        max_steps: the training budget in optimizer steps: training stops at ``epochs`` epochs or ``max_steps``
            steps, whichever comes first, so its cost is bounded whatever the training set's size
            (``benchmarks/detector_budget.py`` measured the default).
        evaluations: how often the validation loss is computed: every epoch, or ``max(1, steps // evaluations)``
            steps when that is sooner (a long epoch of a large set is split); the learning rate anneals at the same
            points.
        stop_after: early stopping: training ends when the validation loss has not improved over this fraction of
            the planned evaluations (0: never); the weights of the best evaluation are kept either way.
        val_images: the validation loss is taken on at most this many validation images (evenly spaced), so an
            evaluation's cost is bounded too.
        seed: initialisation, shuffling and augmentation.
    """

    spatial_dims: int
    image_size: tuple[int, ...]
    arch: Arch = Arch.RESNET18
    embed_dim: int = 128
    augmentation: AugmentPolicy = AugmentPolicy.STRONG
    temperature: float = 0.07
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    lr_min: float = 5e-5
    max_steps: int = 1000
    evaluations: int = 100
    stop_after: float = 0.3
    val_images: int = 256
    seed: int = 0
    preprocessing: PreprocessSpec | None = None

    def validate(self) -> None:
        if not isinstance(self.image_size, list | tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 4 for s in self.image_size
        ):
            raise MemoScopeError(f"detector image_size {self.image_size!r} must be a list of integers of at least 4.")
        if self.spatial_dims not in (2, 3) or len(self.image_size) != self.spatial_dims:
            raise MemoScopeError(
                f"detector spatial_dims {self.spatial_dims} and image_size {self.image_size} disagree."
            )
        check_range("detector embed_dim", self.embed_dim, 1)
        if self.arch == Arch.PIXELS and (
            self.pixel_side**self.spatial_dims != self.embed_dim or any(s < self.pixel_side for s in self.image_size)
        ):
            raise MemoScopeError(
                f"detector embed_dim {self.embed_dim}: the pixels encoder needs a whole grid side^{self.spatial_dims} "
                f"no finer than the image {tuple(self.image_size)} (e.g. {PIXEL_GRID[self.spatial_dims]}^"
                f"{self.spatial_dims})."
            )
        check_range("detector epochs", self.epochs, 1)
        check_range("detector batch_size", self.batch_size, 2)
        check_range("detector temperature", self.temperature, 1e-6)
        check_range("detector lr", self.lr, 1e-12)
        check_range("detector lr_min", self.lr_min, 0.0, self.lr)
        check_range("detector max_steps", self.max_steps, 1)
        check_range("detector evaluations", self.evaluations, 1)
        check_range("detector stop_after", self.stop_after, 0.0, 1.0)
        check_range("detector val_images", self.val_images, 2)

    @classmethod
    def for_dims(cls, spatial_dims: int, image_size: list[int], **overrides: Any) -> DetectorConfig:
        """Defaults per dimensionality: 2D ResNet-18 -> 128, 3D the paper's encoder -> 32."""
        base: dict[str, Any] = {"arch": Arch.RESNET18, "embed_dim": 128}
        if spatial_dims == 3:
            base = {"arch": Arch.CONVRES, "embed_dim": 32, "batch_size": 8}
        if overrides.get("arch") == Arch.PIXELS and "embed_dim" not in overrides:
            base["embed_dim"] = PIXEL_GRID[spatial_dims] ** spatial_dims
        return cls.from_dict({"spatial_dims": spatial_dims, "image_size": list(image_size), **base, **overrides})

    @property
    def pixel_side(self) -> int:
        """The ``pixels`` encoder's grid side (``embed_dim`` = side^d)."""
        return round(self.embed_dim ** (1 / self.spatial_dims))


@dataclass(frozen=True)
class TrainDetectorConfig(Config):
    """``train-detector``: both sets, the output folder, preprocessing and :class:`DetectorConfig` overrides.

    ``ray``: ``local`` or a Ray cluster address to train on Ray Train workers (DDP, the same optimisation as one
    process: :mod:`core.detect.train_ray`); ``workers``: how many (0: one per GPU in the cluster, or 2 on CPUs).
    """

    train: str
    val: str
    out: str
    spec: PreprocessSpec
    slices: SliceAxis | None = None
    skip_bad: bool = False
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    device: str = "auto"
    precision: Precision = Precision.FP32
    patients: str = "auto"  # the --patients rule: training and validation must not share a patient by it
    ray: str = ""
    workers: int = 0


def is_detector_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved detector (its config and weights)."""
    return (Path(folder) / CONFIG_NAME).is_file() and (Path(folder) / WEIGHTS_NAME).is_file()


@dataclass(frozen=True)
class DetectorRecord:
    """A saved detector's config and training history, read without building the network."""

    folder: Path
    config: DetectorConfig
    history: list[dict[str, float]]
    best_epoch: int


def read_detector_record(folder: str | Path) -> DetectorRecord:
    folder = Path(folder)
    if not is_detector_folder(folder):
        raise MemoScopeError(f"{folder}: not a detector folder (needs {CONFIG_NAME} and {WEIGHTS_NAME}).")
    path = folder / CONFIG_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        config = DetectorConfig.from_dict(record["config"], source=f"{path} config")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MemoScopeError(f"{path}: invalid detector record ({exc}).") from exc
    return DetectorRecord(folder, config, record.get("history", []), int(record.get("best_epoch", -1)))


def detector_hash(folder: str | Path) -> str:
    return sha256_files([Path(folder) / CONFIG_NAME, Path(folder) / WEIGHTS_NAME])
