"""Sampling from an LDM checkpoint: per-sample seeds, batched, resumable, written as images."""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from core.common.config import Config, check_range
from core.common.devices import Precision, device_description, resolve_device
from core.common.errors import MemoScopeError
from core.common.progress import Progress, ProgressEvent, silent
from core.common.provenance import atomic_path, atomic_write_json, now_utc, read_json_record, versions
from core.common.tables import write_csv
from core.generative.conditioning import Conditioning, check_against_model, conditioning_values
from core.generative.ldm import LDM, SchedulerName, build_scheduler, load_ldm, read_config
from core.io.readers import SUFFIXES

if TYPE_CHECKING:  # torch and MONAI load when samples are drawn, not when a generation job is configured
    import torch
    from monai.networks.schedulers import Scheduler

logger = logging.getLogger(__name__)


class ImageFormat(StrEnum):
    PNG16 = "png16"
    NPY = "npy"


MANIFEST = "manifest.csv"
RECORD = "generation.json"


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``: a function of (seed, index) only, so batching cannot change it."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def denoise_step(
    scheduler: Scheduler,
    noise_pred: torch.Tensor,
    timestep: int,
    latents: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """One scheduler step for the whole batch.

    DDIM (eta 0) draws no noise: one batched ``scheduler.step``. DDPM adds posterior noise, which MONAI draws
    for the whole batch from one generator on the tensors' device; here each sample's noise comes from its own
    CPU generator instead (so batch size and device cannot change it), replacing what MONAI drew from a probe
    generator whose draw is reproduced exactly.
    """
    import torch
    from monai.networks.schedulers import DDPMScheduler

    if not isinstance(scheduler, DDPMScheduler) or timestep <= 0:
        return scheduler.step(noise_pred, timestep, latents)[0]  # type: ignore[operator,no-any-return]
    probe = torch.Generator(device=latents.device)
    state = probe.get_state()
    stepped: torch.Tensor = scheduler.step(noise_pred, timestep, latents, generator=probe)[0]
    probe.set_state(state)
    drawn = torch.randn(
        noise_pred.size(), dtype=noise_pred.dtype, layout=noise_pred.layout, generator=probe, device=latents.device
    )
    own = torch.stack([torch.randn(noise_pred.shape[1:], generator=g) for g in generators])
    sigma = scheduler._get_variance(timestep) ** 0.5  # the scale MONAI's step gave its own noise
    return stepped + sigma * (own.to(device=latents.device, dtype=noise_pred.dtype) - drawn)


def compile_denoiser(ldm: LDM, device: torch.device) -> LDM:
    """The LDM with its UNet compiled by ``torch.compile`` (the denoiser runs once per step; the decoder once).

    On CUDA the ``reduce-overhead`` mode also records the step as a CUDA graph, which removes the per-kernel launch
    cost that dominates small latents. Shapes are static: each batch size compiles once. The first batch pays the
    compilation (tens of seconds to minutes; on a CPU it needs a C++ compiler); samples agree with the eager ones
    up to floating-point differences.
    """
    import dataclasses

    import torch

    mode = "reduce-overhead" if device.type == "cuda" else "default"
    return dataclasses.replace(ldm, unet=torch.compile(ldm.unet, mode=mode, dynamic=False))  # type: ignore[arg-type]


def sample(
    ldm: LDM,
    seeds: list[int],
    steps: int,
    scheduler_name: SchedulerName = SchedulerName.DDIM,
    device: torch.device | str = "cpu",
    precision: Precision = Precision.FP32,
    conditions: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Generate one image per seed, the whole batch through each denoising step at once.

    The initial latent and every DDPM noise term of sample i come from a CPU generator seeded by its seed
    alone, so sample i is the same whichever batch it is computed in and, up to floating-point differences,
    on whichever device.

    Args:
        conditions: for a conditional LDM, ``(len(seeds), C)`` values per sample: concatenated to the latent as
            constant channels and/or given as the cross-attention context, as the model was built
            (:attr:`core.generative.ldm.LDMConfig.conditioning`).

    Returns:
        ``(len(seeds), 1, *image_size)`` float32, clipped to [-1, 1].
    """
    import torch

    device = torch.device(device)
    scheduler = build_scheduler(ldm.config, scheduler_name)
    scheduler.set_timesteps(num_inference_steps=steps, device=device)  # type: ignore[operator]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    latents = torch.stack([torch.randn(ldm.config.latent_shape, generator=g) for g in generators]).to(device)
    dtype = Precision(precision).autocast_dtype
    autocast = torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)
    wanted = ldm.config.conditioning
    cond = torch.as_tensor(conditions, dtype=torch.float32, device=device) if conditions is not None else None
    if bool(wanted) != (cond is not None) or (cond is not None and cond.shape[0] != len(seeds)):
        raise MemoScopeError(
            f"the LDM takes conditioning {wanted or 'none'}; got {None if cond is None else cond.shape}"
        )
    context = cond[:, None, :] if cond is not None and "cross_attention_dim" in wanted else None
    extra = (
        cond.reshape(*cond.shape, *[1] * ldm.config.spatial_dims).expand(-1, -1, *latents.shape[2:])
        if cond is not None and "concat_channels" in wanted
        else None
    )
    with torch.inference_mode():
        for t in scheduler.timesteps:
            timesteps = torch.full((len(seeds),), int(t), device=device, dtype=torch.long)
            model_input = latents if extra is None else torch.cat([latents, extra], dim=1)
            with autocast:
                noise_pred = ldm.unet(model_input, timesteps=timesteps, context=context).float()
            latents = denoise_step(scheduler, noise_pred, int(t), latents, generators)
        with autocast:
            images = ldm.autoencoder.decode_stage_2_outputs(latents / ldm.config.scale_factor).float()
    if not torch.isfinite(images).all():
        raise MemoScopeError(
            "the decoder gave NaN/Inf pixels (a diverged checkpoint, or a scale factor or schedule that does not fit "
            "it); no sample was written for this batch."
        )
    return images.clamp(-1.0, 1.0).cpu().numpy()


def to_uint16(image: npt.NDArray[np.floating]) -> npt.NDArray[np.uint16]:
    """[-1, 1] float -> full-range uint16."""
    return np.round((np.clip(image, -1.0, 1.0) + 1.0) * 0.5 * 65535.0).astype(np.uint16)


def write_image(image: npt.NDArray[np.float32], path: Path, spatial_dims: int, fmt: ImageFormat) -> None:
    """Write one ``(1, *S)`` sample atomically: NIfTI for 3D; 16-bit PNG or NPY for 2D."""
    import nibabel as nib
    from PIL import Image

    with atomic_path(path) as tmp:
        if spatial_dims == 3:
            nib.save(nib.Nifti1Image(image[0].astype(np.float32), np.eye(4)), str(tmp.with_suffix(".nii.gz")))
            tmp.with_suffix(".nii.gz").replace(tmp)
        elif fmt == ImageFormat.PNG16:
            buffer = io.BytesIO()
            Image.fromarray(to_uint16(image[0])).save(buffer, format="PNG")
            tmp.write_bytes(buffer.getvalue())
        else:
            with open(tmp, "wb") as handle:
                np.save(handle, image[0].astype(np.float32))


def sample_filename(index: int, spatial_dims: int, fmt: ImageFormat) -> str:
    suffix = ".nii.gz" if spatial_dims == 3 else (".png" if fmt == ImageFormat.PNG16 else ".npy")
    return f"sample_{index:06d}{suffix}"


@dataclass(frozen=True)
class GenerateConfig(Config):
    """What ``generate`` samples and where (saved in the job record; ``generation.json`` records the result).

    Attributes:
        checkpoint: an LDM folder (``ldm.json`` + safetensors).
        out: the output folder; a rerun with the same checkpoint, seed and steps resumes.
        n: number of samples; sample ``i`` is seeded by ``(seed, i)`` only.
        steps, scheduler: denoising steps and DDIM/DDPM.
        batch_size: samples per forward pass (does not change any sample); 0 fits it to the device (see
            :func:`fit_batch_size`).
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda[:i]`` or ``mps``.
        precision: autocast dtype on GPU.
        format: 2D file format (3D is always NIfTI).
        conditioning, condition: a conditional LDM's values per sample: a CSV with one row per sample (its
            columns the values, in the model's order), or rules ``NAME=VALUE|uniform(LOW,HIGH)|normal(MEAN,SD)``
            drawn per sample from ``(seed, i)`` (see :mod:`core.generative.conditioning`).
        compile: compile the denoiser with ``torch.compile`` (:func:`compile_denoiser`): pays off on long runs.
        ray: empty to sample here; ``local`` or a cluster address (``auto``, ``ray://host:port``) to fan the
            batches out over Ray actors (one per GPU), see :mod:`core.common.cluster`; ``workers`` sets their
            number (0: one per GPU). Files are written here, by this process, as batches come back.
    """

    checkpoint: str
    out: str
    n: int
    steps: int = 50
    scheduler: SchedulerName = SchedulerName.DDIM
    batch_size: int = 0
    seed: int = 0
    device: str = "auto"
    precision: Precision = Precision.FP32
    format: ImageFormat = ImageFormat.PNG16
    ray: str = ""
    workers: int = 0
    conditioning: str = ""
    condition: tuple[str, ...] = ()
    compile: bool = False

    def validate(self) -> None:
        check_range("n", self.n, 1)
        check_range("workers", self.workers, 0)
        check_range("steps", self.steps, 1)
        check_range("batch_size", self.batch_size, 0)
        check_range("seed", self.seed, 0)


CPU_BATCH = 32  # CPU throughput still grows up to here (benchmarks/results/generate_speed_cpu.md)
MAX_GPU_BATCH = 1024


def fit_batch_size(ldm: LDM, device: torch.device, precision: Precision = Precision.FP32) -> int:
    """The largest batch (at most 1,024, halving from there) whose denoiser and decoder passes fit on a GPU;
    32 on CPU."""
    import torch

    if device.type != "cuda":
        return CPU_BATCH
    dtype = Precision(precision).autocast_dtype
    batch = MAX_GPU_BATCH
    while batch > 1:
        try:
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                latents = torch.zeros((batch, *ldm.config.latent_shape), device=device)
                ldm.unet(latents, timesteps=torch.zeros(batch, dtype=torch.long, device=device))
                ldm.autoencoder.decode_stage_2_outputs(latents)
            return batch
        except torch.OutOfMemoryError:
            batch //= 2
        finally:
            torch.cuda.empty_cache()
    return 1


@dataclass
class GenerationResult:
    out: Path
    n_written: int
    n_skipped: int
    seconds: float
    record: dict[str, Any]


@dataclass(frozen=True)
class GenerationRecord:
    """``generation.json``, as ``generate`` writes it beside its samples (the one reader of its keys).

    Attributes:
        checkpoint, checkpoint_hash: the LDM the samples came from.
        n, seed, steps, scheduler, precision: what was sampled and how (a resume must match them).
        conditioning: the conditioning's names (empty for an unconditional model) and where the values came from.
        data: the whole record as written (kept verbatim in a scan's summary).
    """

    checkpoint: str | None
    checkpoint_hash: str | None
    n: int
    seed: int | None
    steps: int | None
    scheduler: str
    precision: str
    conditioning: dict[str, Any] | None
    data: dict[str, Any]

    @property
    def conditioning_names(self) -> list[str]:
        return list((self.conditioning or {}).get("names") or [])

    @classmethod
    def of(cls, data: dict[str, Any]) -> GenerationRecord:
        return cls(
            checkpoint=data.get("checkpoint"),
            checkpoint_hash=data.get("checkpoint_hash"),
            n=int(data.get("n", 0)),
            seed=data.get("seed"),
            steps=data.get("steps"),
            scheduler=str(data.get("scheduler", SchedulerName.DDIM)),
            precision=str(data.get("precision", Precision.FP32)),
            conditioning=data.get("conditioning"),
            data=data,
        )


def read_generation(path: str | Path) -> GenerationRecord:
    """The record at ``path`` (a ``generation.json``, or the folder holding one)."""
    path = Path(path)
    path = path / RECORD if path.is_dir() else path
    data = read_json_record(path, "generation record")
    try:
        return GenerationRecord.of(data)
    except (TypeError, ValueError) as exc:
        raise MemoScopeError(f"{path}: a field of the generation record has the wrong type ({exc}).") from exc


def generation_records(source: str | Path) -> list[GenerationRecord]:
    """Every generation record under a synthetic folder (none for a manifest or a folder of other images)."""
    source = Path(source)
    return [read_generation(path) for path in sorted(source.rglob(RECORD))] if source.is_dir() else []


def generate(config: GenerateConfig, progress: Progress = silent) -> GenerationResult:
    """Generate ``config.n`` samples into ``config.out``; samples already written are kept (resume).

    Writes each image atomically, ``manifest.csv`` (path, patient_id, split, index, seed) and
    ``generation.json`` (checkpoint hash, settings, versions) after every batch.

    One function: the resume checks, the batches and the manifest rewritten after every batch share one generation
    record.
    """
    given = conditioning_values(config.n, config.seed, config.conditioning, config.condition)
    check_against_model(given, read_config(config.checkpoint).conditioning, config.checkpoint)  # before any work
    torch_device = resolve_device(config.device)
    ldm = load_ldm(config.checkpoint, torch_device)
    trained = int(ldm.config.scheduler.get("num_train_timesteps", 1000))
    if config.steps > trained:
        raise MemoScopeError(
            f"--steps {config.steps}: the checkpoint's schedule has {trained} timesteps; give at most {trained}."
        )
    dims, fmt, seed, n = ldm.config.spatial_dims, config.format, config.seed, config.n
    out = Path(config.out)
    record = {
        **config.to_dict(),
        "checkpoint_hash": ldm.checkpoint_hash,
        "device": device_description(torch_device),
        "format": "nifti" if dims == 3 else fmt.value,
        "preprocessing": ldm.config.preprocessing,
        "conditioning": None if given is None else {"names": given.names, **given.source},
        "versions": versions(),
        "started_at": now_utc(),
    }
    del record["out"]
    previous = out / RECORD
    if previous.is_file():
        old = read_generation(previous)
        if (
            old.checkpoint_hash != ldm.checkpoint_hash
            or old.seed != seed
            or old.steps != config.steps
            or old.scheduler != config.scheduler
            or old.precision != config.precision
            or old.conditioning != record["conditioning"]
        ):
            raise MemoScopeError(
                f"{out}: holds samples from another checkpoint, seed, step count, scheduler, precision or "
                "conditioning; resuming would mix them under one label. Choose an empty folder."
            )
        if old.n > n:
            raise MemoScopeError(
                f"{out}: holds a generation of {old.n} samples; writing {n} there would replace the set a study may "
                "have scanned (and its manifest) with a smaller one. Choose a new folder, or give --n "
                f"{old.n} or more to resume or extend it."
            )
    elif out.is_dir():
        foreign = sorted(f for f in out.rglob("*") if f.name.lower().endswith(SUFFIXES))
        if foreign:
            raise MemoScopeError(
                f"{out}: holds {len(foreign)} image file(s) MemoScope did not generate (e.g. {foreign[0].name}: real "
                "scans?); samples written among them would be scanned as one synthetic set. Choose an empty folder."
            )
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not (out / sample_filename(i, dims, fmt)).exists()]
    start = time.perf_counter()
    batch_size = config.batch_size or fit_batch_size(ldm, torch_device, config.precision)
    if config.compile:
        ldm = compile_denoiser(ldm, torch_device)
    record["batch_size_used"] = batch_size
    logger.info("generating %d of %d samples on %s, %d at a time", len(todo), n, record["device"], batch_size)
    progress(ProgressEvent("sample", n - len(todo), n))
    batches = [todo[b : b + batch_size] for b in range(0, len(todo), batch_size)]
    work = [([sample_seed(seed, i) for i in b], None if given is None else given.values[b]) for b in batches]
    if config.ray:
        from core.common.cluster import map_batches

        record["ray"] = config.ray
        stage = (config.checkpoint, config.device, config.steps, config.scheduler, config.precision, config.compile)
        results = map_batches(_SampleStage, stage, work, config.ray, config.workers)
    else:
        results = (
            sample(ldm, seeds, config.steps, config.scheduler, torch_device, config.precision, conds)
            for seeds, conds in work
        )
    done = n - len(todo)
    for indices, images in zip(batches, results, strict=True):
        for i, image in zip(indices, images, strict=True):
            write_image(image, out / sample_filename(i, dims, fmt), dims, fmt)
        done += len(indices)
        progress(ProgressEvent("sample", done, n, f"{done}/{n} samples"))
        _write_manifest(out, n, seed, dims, fmt, record, given)
    _write_manifest(out, n, seed, dims, fmt, {**record, "finished_at": now_utc()}, given)
    return GenerationResult(out, len(todo), n - len(todo), time.perf_counter() - start, record)


class _SampleStage:
    """Generation as a Ray stage: the checkpoint loads once per worker; ``run`` samples one batch of seeds."""

    def __init__(
        self,
        checkpoint: str,
        device: str,
        steps: int,
        scheduler: SchedulerName,
        precision: Precision,
        compiled: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.ldm = load_ldm(checkpoint, self.device)
        if compiled:
            self.ldm = compile_denoiser(self.ldm, self.device)
        self.steps, self.scheduler, self.precision = steps, scheduler, precision

    def run(self, batch: tuple[list[int], npt.NDArray[np.float32] | None]) -> npt.NDArray[np.float32]:
        seeds, conditions = batch
        return sample(self.ldm, seeds, self.steps, self.scheduler, self.device, self.precision, conditions)


def _write_manifest(
    out: Path, n: int, seed: int, dims: int, fmt: ImageFormat, record: dict[str, Any], given: Conditioning | None
) -> None:
    """``manifest.csv``: each written sample with its seed, and its conditioning values when the model took any."""
    names = [(i, sample_filename(i, dims, fmt)) for i in range(n)]
    extra = given.names if given is not None else []
    rows = [
        [name, f"synthetic-{i:06d}", "synthetic", i, sample_seed(seed, i)]
        + ([f"{v:.6g}" for v in given.values[i]] if given is not None else [])
        for i, name in names
        if (out / name).exists()
    ]
    write_csv(out / MANIFEST, ["path", "patient_id", "split", "index", "seed", *extra], rows)
    atomic_write_json(out / RECORD, record)
