"""Detector training past one machine: Ray Train's ``TorchTrainer`` (DDP) runs the optimisation one process runs.

NT-Xent is not a sum over independent images: every image's negatives are the whole batch. So the workers do not
split the training set; they split each global batch, and together compute what :func:`train_detector` computes:

1. Every worker draws the same global batches (:func:`batch_stream` at ``config.seed``) and augments the whole
   batch with the same seeded transform (augmenting is cheap next to the network), so the random stream is one
   process's; it then embeds only its shard: images ``[lo, hi)`` of the batch and their views.
2. The embeddings are all-gathered with their gradient (``torch.distributed.nn.functional.all_gather``) back into
   one process's order, and every rank takes the full batch's loss. Its backward sums every rank's (identical)
   loss gradient, N times one loss's; DDP averages the parameter gradients over the N ranks: one process's
   gradient (``tests/test_train_ray.py`` compares them parameter by parameter).
3. BatchNorm normalises with the whole global batch's statistics (:class:`ShardedBatchNorm`: sums all-reduced with
   their gradient, mean then variance as one process takes them), as one process does. ``torch.nn.SyncBatchNorm``
   would, but refuses CPU tensors (torch 2.13's ``forward`` raises "SyncBatchNorm expected input tensor to be on
   GPU or XPU" once a process group exists), and one implementation runs everywhere here. The running statistics
   are updated from the global mean and unbiased variance. Per-rank statistics, what plain DDP gives, would be
   another algorithm: on the demo the first loss differs by 0.5 and the gradients by more than 100 %.
4. Dropout (the ``convres`` head) draws the whole global batch's mask from the seeded torch generator, as
   ``F.dropout`` does on a CPU, and keeps its rows (:class:`ShardedDropout`): the masks are one process's. On a
   GPU, one process's fused dropout draws from another stream, so there the masks differ from one process's run
   (the same distribution).
5. Rank 0 takes the validation loss (:func:`validation_loss`, its own fixed seed) and broadcasts it; early
   stopping and keeping the best weights follow it on every rank alike.

What remains different is the order of floating-point sums (over ranks, where one process sums over the batch).
In float64, N ranks follow one process to ~1e-13 over several Adam steps. In float32 one step's loss agrees to
~1e-6 and its gradients to ~1e-5 of each tensor's largest entry (up to 6e-4 when BatchNorm normalises only a few
values per channel), and training amplifies that: the ResNet's max-pool sends a tie's gradient to the first
maximum, so a last-bit difference moves it (flat backgrounds and border-padded augmentation make ties), and Adam's
first steps move a weight by about ``lr`` whatever its gradient's size or sign. On the demo (64 x 64, batch 32) two
workers' losses stay within 1e-4 of one process's for 4 steps and 3e-3 after 7.

The trained weights, the history and progress come back to the driver through a small Ray actor (the object
store), so no shared file system is needed; Ray Train's own run records go to a temporary folder, removed after.
Ray is imported only here, when a run is asked for.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from pytorch_metric_learning.losses import NTXentLoss
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from core.common.devices import Precision, autocast, check_precision, device_description
from core.common.errors import MemoScopeError
from core.common.progress import Progress, ProgressEvent, silent
from core.detect.detector import (
    Detector,
    DetectorConfig,
    _views,
    build_encoder,
    check_training_sets,
    start_training,
    training_provenance,
    training_schedule,
    untrained_detector,
    validation_images,
    validation_loss,
)
from core.io.load import ImageSet

logger = logging.getLogger(__name__)


@dataclass
class Shard:
    """Where this rank's rows sit in the global batch of one forward pass (shared by the sharded layers).

    Attributes:
        world: ranks taking part (1: no collective, the layers behave as the ones they replace).
        rows: this rank's real rows' indices in the global ``(2B, ...)`` input (images, then their views).
        total: rows in the global input (2B).
        real: real rows at the start of this rank's input; a rank with no image of a small batch runs one
            placeholder row, which no statistic or loss sees, so that every rank takes part in every collective.
    """

    world: int = 1
    rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    total: int = 0
    real: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1


class ShardedBatchNorm(_BatchNorm):
    """BatchNorm over the global batch spread across ranks: the batch mean and variance are all-reduced (with
    their gradient) from the ranks' sums, two passes as one process's batch statistics; in eval, or on one rank,
    exactly the BatchNorm it replaces (same parameters and buffers, so the same state dict)."""

    shard: Shard

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.shard.active):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        x = input.to(torch.promote_types(input.dtype, torch.float32))  # statistics in float32 at least
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = self.shard.total * math.prod(x.shape[2:])
        real = x[: self.shard.real]
        mean = all_reduce(real.sum(dims)) / count
        centred = x - mean.view(shape)
        var = all_reduce(centred[: self.shard.real].square().sum(dims)) / count
        if self.track_running_stats and self.num_batches_tracked is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                assert self.running_mean is not None and self.running_var is not None
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (count / max(count - 1, 1)), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


class ShardedDropout(nn.Dropout):
    """Dropout whose mask is the global batch's, drawn as ``F.dropout`` draws it on a CPU (``bernoulli_(1 - p)``
    over the whole input's shape, divided by ``1 - p``), of which this rank keeps its rows; on one rank, or in eval,
    plain dropout."""

    shard: Shard

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.shard.active) or self.p == 0:
            return super().forward(input)
        shape = (self.shard.total, *input.shape[1:])
        noise = torch.empty(shape, dtype=input.dtype, device=input.device).bernoulli_(1 - self.p).div_(1 - self.p)
        mask = noise[self.shard.rows.to(input.device)]
        if len(mask) < len(input):  # the placeholder row of a rank without images
            mask = torch.cat([mask, mask.new_ones(len(input) - len(mask), *input.shape[1:])])
        return input * mask


def shard_layers(model: nn.Module) -> Shard:
    """Replace ``model``'s BatchNorm and Dropout layers by their sharded versions in place (the same state dict);
    return the :class:`Shard` they read. Other layers that couple the images of a batch are refused."""
    shard = Shard()
    for name, module in list(model.named_modules()):
        replacement: nn.Module | None = None
        if isinstance(module, _BatchNorm) and not isinstance(module, ShardedBatchNorm):
            replacement = ShardedBatchNorm(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            replacement.load_state_dict(module.state_dict())
        elif type(module) is nn.Dropout:
            replacement = ShardedDropout(module.p)
        elif isinstance(module, _DropoutNd | nn.AlphaDropout) and not isinstance(module, ShardedDropout):
            raise MemoScopeError(f"{type(module).__name__} ({name}): training on Ray cannot reproduce its masks.")
        if replacement is not None:
            replacement.shard = shard  # type: ignore[assignment]
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    return shard


def shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` image ranges of a batch of ``n``, one per rank, as even as can be."""
    edges = [rank * n // world for rank in range(world + 1)]
    return list(itertools.pairwise(edges))


def sharded_nt_xent(
    model: nn.Module,
    batch: torch.Tensor,
    views: torch.Tensor,
    loss_fn: NTXentLoss,
    shard: Shard,
    rank: int,
) -> torch.Tensor:
    """The global batch's NT-Xent (:func:`~core.detect.detector.nt_xent`) on every rank, this rank embedding only
    its shard; the embeddings are all-gathered with their gradient into one process's order."""
    n = len(batch)
    bounds = shard_bounds(n, shard.world)
    lo, hi = bounds[rank]
    mine = torch.arange(lo, hi)
    shard.rows, shard.total, shard.real = torch.cat([mine, mine + n]), 2 * n, 2 * (hi - lo)
    local = torch.cat([batch[lo:hi], views[lo:hi]]) if hi > lo else batch[:1]  # a placeholder row: see Shard
    embeddings = model(local)
    embeddings = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))  # the loss in float32 at least
    labels = torch.arange(n).repeat(2)
    if not shard.active:
        return loss_fn(embeddings, labels)
    from torch.distributed.nn.functional import all_gather

    rows = 2 * max(b - a for a, b in bounds)
    real = embeddings[: shard.real]
    padded = torch.cat([real, real.new_zeros(rows - len(real), real.shape[1])])
    parts = all_gather(padded)
    sizes = [b - a for a, b in bounds]
    images = [part[:size] for part, size in zip(parts, sizes, strict=True)]
    augmented = [part[size : 2 * size] for part, size in zip(parts, sizes, strict=True)]
    return loss_fn(torch.cat(images + augmented), labels)


class _Inbox:
    """The driver's mailbox on Ray (no CPU of its own): rank 0 posts progress and, at the end, the trained weights
    and history; the driver reads them through the object store."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, str]] = []
        self.result: dict[str, Any] | None = None

    def post(self, done: int, total: int, text: str) -> None:
        self.events.append((done, total, text))

    def since(self, start: int) -> list[tuple[int, int, str]]:
        return self.events[start:]

    def finish(self, result: dict[str, Any]) -> None:
        self.result = result

    def take(self) -> dict[str, Any] | None:
        return self.result


def _broadcast(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def train_shard(
    images: npt.NDArray[np.float32],
    x_val: torch.Tensor | None,
    config: DetectorConfig,
    rank: int,
    world: int,
    device: torch.device,
    precision: str = Precision.FP32,
    wrap: Callable[[nn.Module], nn.Module] = lambda module: module,
    post: Callable[[int, int, str], None] = lambda done, total, text: None,
) -> dict[str, Any] | None:
    """One rank's part of :func:`~core.detect.detector.train_detector` (in a process group of ``world`` ranks
    when ``world`` > 1): the same periods, steps, learning rates, validation and early stopping, each step's batch
    sharded (see the module's text). One rank and no process group is :func:`train_detector` itself.

    Args:
        images: the whole training set (every rank draws the same batches from it).
        x_val: the validation images (:func:`validation_images`), on rank 0 only; its loss is broadcast.
        wrap: puts the encoder on ``device`` and in DDP (Ray Train's ``prepare_model``).
        post: rank 0's progress, ``(done, total, text)``.

    Returns:
        on rank 0, the best evaluation's weights (numpy), the history, the best evaluation, the steps taken and
        the device; None on the others.

    One function: as :func:`train_detector`, whose steps it follows line for line (one rank of it is that function
    bit for bit: ``tests/test_train_ray.py``), the periods, the validation loss, early stopping and the best
    weights share one training state.
    """
    precision = check_precision(device, precision)
    scaler = torch.amp.GradScaler(device.type) if precision == Precision.FP16 else None
    torch.manual_seed(config.seed)
    module = build_encoder(config)
    shard = shard_layers(module)
    shard.world = world
    model = wrap(module)
    schedule, optimizer, scheduler, loss_fn, transform, batches = start_training(model, len(images), config)
    history: list[dict[str, float]] = []
    best_loss, best_state, best = math.inf, copy.deepcopy(module.state_dict()), -1
    done = 0
    for period in range(schedule.periods):
        model.train()
        losses = []
        for idx in itertools.islice(batches, min(schedule.period, schedule.steps - done)):
            batch, views = _views(torch.from_numpy(images[idx]), transform, device)
            with autocast(device, precision):
                loss = sharded_nt_xent(model, batch, views, loss_fn, shard, rank)
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            losses.append(float(loss.detach()))
        done += len(losses)
        scheduler.step()
        module.eval()
        val_loss = math.nan
        if x_val is not None:
            val_loss = validation_loss(module, x_val, config, loss_fn, device, precision)
        if world > 1:
            val_loss = _broadcast(val_loss, device)
        history.append({"epoch": period, "step": done, "train_loss": float(np.mean(losses)), "val_loss": val_loss})
        if val_loss < best_loss:
            best_loss, best = val_loss, period
            if rank == 0:
                best_state = copy.deepcopy(module.state_dict())
        if rank == 0:
            text = f"step {done}/{schedule.steps}: train {history[-1]['train_loss']:.4f} val {val_loss:.4f}"
            post(done, schedule.steps, text)
        if schedule.patience and period - best >= schedule.patience:
            if rank == 0:
                post(schedule.steps, schedule.steps, f"stopped early at step {done}")
            break
    if rank != 0:
        return None
    state = {k: v.detach().cpu().numpy() for k, v in best_state.items()}
    return {"state": state, "history": history, "best": best, "done": done, "device": device_description(device)}


def _train_loop(loop: dict[str, Any]) -> None:
    """One Ray Train worker: :func:`train_shard` on its rank; rank 0 sends the result to the driver's inbox."""
    import ray
    import ray.train
    import ray.train.torch

    # the differentiable collectives are deprecated for torch's functional ones, which are private still
    warnings.filterwarnings("ignore", "torch.distributed.nn.functional", FutureWarning)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    inbox = loop["inbox"]
    x_val = torch.from_numpy(np.array(ray.get(loop["val"]))) if rank == 0 else None
    result = train_shard(
        ray.get(loop["images"]),  # the object store's copy, read in place
        x_val,
        loop["config"],
        rank,
        world,
        ray.train.torch.get_device(),
        loop["precision"],
        wrap=ray.train.torch.prepare_model,  # to the worker's device; DDP over the ranks when there are more
        post=lambda done, total, text: inbox.post.remote(done, total, text),
    )
    if result is not None:
        ray.get(inbox.finish.remote(result))


def ray_workers(ray: Any, device: str, workers: int) -> tuple[int, bool]:
    """(workers, one GPU each): ``device`` ``cpu`` keeps to CPUs, ``cuda`` needs the cluster's GPUs, ``auto`` takes
    them when there are any; ``workers`` 0 is one per GPU, or 2 on CPUs."""
    from core.common.cluster import cluster_gpus

    if device != "auto":
        try:
            torch.device(device)
        except RuntimeError as exc:
            raise MemoScopeError(f"--device {device!r} is not a device; use auto, cpu or cuda.") from exc
    gpus = cluster_gpus(ray)
    if str(device).startswith("cuda") and not gpus:
        raise MemoScopeError(f"--device {device}: the Ray cluster has no GPU; use --device cpu or auto.")
    use_gpu = bool(gpus) and str(device) != "cpu"
    if workers < 0:
        raise MemoScopeError(f"--workers {workers}: give a number of workers (0: one per GPU, or 2 on CPUs).")
    return workers or (gpus if use_gpu else 2), use_gpu


def train_detector_on_ray(
    train: ImageSet,
    val: ImageSet,
    config: DetectorConfig,
    address: str,
    workers: int = 0,
    progress: Progress = silent,
    device: torch.device | str = "auto",
    precision: str = Precision.FP32,
) -> Detector:
    """:func:`~core.detect.detector.train_detector` on ``workers`` Ray Train workers (DDP; one GPU each when the
    cluster has GPUs and ``device`` allows them): the same batches, augmentation, loss and gradient as one process
    (see the module's text), saved and used as any other detector. ``address``: ``local`` or a Ray cluster."""
    from core.common.cluster import connect

    check_training_sets(train, val, config)
    ray = connect(address)
    if not config.arch.trained:
        return untrained_detector(train, val, config, torch.device("cpu"), precision, progress)
    count, use_gpu = ray_workers(ray, str(device), workers)
    if Precision(precision) == Precision.FP16 and not use_gpu:
        check_precision(torch.device("cpu"), precision)  # fp16 needs a GPU: refused before any worker starts
    loop = {
        "config": config,
        "images": ray.put(np.ascontiguousarray(train.images)),  # once in the object store, read in place
        "val": ray.put(validation_images(val, config).numpy()),
        "precision": str(precision),
    }
    result = _fit(ray, loop, count, use_gpu, progress)
    model = build_encoder(config)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in result["state"].items()}, strict=True)
    model.eval()
    schedule = training_schedule(len(train), config)
    provenance = {
        **training_provenance(train, val, schedule, result["done"], torch.device("cpu"), precision),
        "device": result["device"],  # the first worker's
        "workers": count,
        "ray": {"address": address, "ray": ray.__version__, "torch": torch.__version__, "use_gpu": use_gpu},
    }
    return Detector(config, model, result["history"], result["best"], provenance)


def _fit(ray: Any, loop: dict[str, Any], count: int, use_gpu: bool, progress: Progress) -> dict[str, Any]:
    """Run :func:`_train_loop` on ``count`` Ray Train workers, relaying rank 0's progress; return its result. Ray
    Train's run records go to a temporary folder, removed after; a worker's :class:`MemoScopeError` is raised as
    itself."""
    from ray.train import RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    inbox = ray.remote(num_cpus=0)(_Inbox).remote()
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(ray, inbox, progress, stop), daemon=True)
    try:
        with tempfile.TemporaryDirectory(prefix="memoscope-ray-train-") as storage:
            trainer = TorchTrainer(
                _train_loop,
                train_loop_config={**loop, "inbox": inbox},
                scaling_config=ScalingConfig(num_workers=count, use_gpu=use_gpu),
                run_config=RunConfig(name="detector", storage_path=storage),
            )
            relay.start()
            try:
                trainer.fit()
            except TrainingFailedError as exc:
                found = _worker_memoscope_error(exc)
                if found is None:
                    raise
                raise found from exc
            finally:
                stop.set()
                relay.join()
        result: dict[str, Any] | None = ray.get(inbox.take.remote())
    finally:
        ray.kill(inbox)
    if result is None:
        raise MemoScopeError("detector training on Ray ended without a result from its first worker.")
    return result


def _relay(ray: Any, inbox: Any, progress: Progress, stop: threading.Event) -> None:
    """The workers' progress, posted to the inbox, passed on to ``progress`` here until ``stop``."""
    seen = 0
    while True:
        finished = stop.wait(0.5)
        try:
            events = ray.get(inbox.since.remote(seen))
        except Exception:  # the inbox is gone: training is over
            return
        for done, total, text in events:
            progress(ProgressEvent("train detector", done, total, text))
        seen += len(events)
        if finished:
            return


def _worker_memoscope_error(exc: Exception) -> MemoScopeError | None:
    """The :class:`MemoScopeError` a worker raised (a message for the user), if that is why training failed."""
    failures: dict[int, Exception] = getattr(exc, "worker_failures", {}) or {}
    for failure in failures.values():
        cause: BaseException | None = failure
        while cause is not None:
            if isinstance(cause, MemoScopeError):
                return MemoScopeError(str(cause))
            cause = cause.__cause__ or getattr(cause, "cause", None)
    return None
