"""Detector training on Ray Train workers (DDP) computes one process's training, not an approximation of it.

How close, and why (see :mod:`core.detect.train_ray`):

- the workers' loop on one rank is train_detector bit for bit (schedule, learning rates, validation, early
  stopping, best weights);
- in float64 the sharded computation is the same maths summed in another order: 3 ranks (shards of 0, 1 and 2
  images) give one process's gradients to 1e-8 of each tensor and follow its training to ~1e-13 over several Adam
  steps, so any difference of algorithm (per-rank BatchNorm statistics, another dropout mask, a gradient scaled by
  the ranks, another augmentation) shows; breaking the gradient scaling fails these tests by 100-200 %;
- in float32 (the product), one step's loss agrees to ~1e-6 and its gradients to ~1e-5 of each tensor's largest
  entry (6e-4 when BatchNorm normalises 4 values per channel); a bias before BatchNorm has a gradient of 0 in exact
  arithmetic, so rounding noise on both sides;
- training amplifies float32 rounding (the ResNet's max-pool sends a tie's gradient to the first maximum, so a
  last-bit difference moves it; Adam's first steps move a weight by about ``lr`` whatever its gradient's size), so
  the loss curves on Ray Train are compared within the tolerances stated in the test, and the calls must agree.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_metric_learning.losses import NTXentLoss

from core.common.errors import MemoScopeError
from core.detect import detector as detector_module
from core.detect import train_ray
from core.detect.detector import (
    DetectorConfig,
    batch_stream,
    build_encoder,
    embed,
    load_detector,
    nt_xent,
    train_and_save,
    train_detector,
    validation_images,
)
from core.detect.metrics import ThresholdRule, calibrate, is_copy
from core.detect.search import search_all
from core.detect.train_ray import shard_bounds, shard_layers, sharded_nt_xent, train_shard
from core.io.augment import augment_batch, augmentation
from core.io.discover import Role
from core.io.load import ImageSet, load_set
from core.io.preprocessing import PreprocessSpec, one_torch_thread

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo" / "2d" / "manifest.csv"
RANKS = 3  # the maths: shards of 0 (a placeholder row), 1 and 2 images, and DDP's mean over 3 (inexact in floats)
# one step's batches: on 3 ranks, shards of 0 + 1 + 1 images (batch of 2), 1 + 1 + 3 (5) and 1 + 1 + 2 (4);
# resnet18 (BatchNorm), convres (GroupNorm, dropout)
STEPS = [("resnet18", 2), ("resnet18", 5), ("convres", 2), ("convres", 4)]
ARCHS = ["resnet18", "convres"]
DTYPES = [torch.float32, torch.float64]
F64_STEPS = 4
SPEC16 = PreprocessSpec((16, 16))


def test_a_bad_address_is_a_clear_error(tmp_path: Path) -> None:
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    train, val = _set(4, 0, "p1"), _set(4, 1, "p2")
    with pytest.raises(MemoScopeError, match="cannot reach a Ray cluster"):
        train_and_save(train, val, tmp_path / "det", overrides={"arch": "convres"}, ray="ray://127.0.0.1:1")
    assert not (tmp_path / "det").exists()


def test_batches_are_sharded_evenly_and_unknown_coupling_layers_refused() -> None:
    assert shard_bounds(5, 2) == [(0, 2), (2, 5)]
    assert shard_bounds(2, 3) == [(0, 0), (0, 1), (1, 2)]  # a rank without an image runs a placeholder row
    assert [b - a for a, b in shard_bounds(32, 8)] == [4] * 8
    with pytest.raises(MemoScopeError, match="Dropout2d"):
        shard_layers(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Dropout2d(0.1)))


def test_a_workers_memoscope_error_reaches_the_user_as_itself() -> None:
    from ray.train import WorkerGroupError

    from core.detect.train_ray import _worker_memoscope_error

    found = _worker_memoscope_error(WorkerGroupError("rank 1 failed", {1: MemoScopeError("--precision fp16: ...")}))
    assert isinstance(found, MemoScopeError) and str(found) == "--precision fp16: ..."
    assert _worker_memoscope_error(WorkerGroupError("rank 0 failed", {0: RuntimeError("a bug")})) is None


def _set(n: int, seed: int, patient: str) -> ImageSet:
    return ImageSet([f"{patient}-{i}" for i in range(n)], [patient] * n, _images(n, seed).numpy(), SPEC16, patient)


class _Rising:
    """A validation loss that only rises: 0, 1, 2, ..."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        self.calls += 1
        return float(self.calls - 1)


def test_one_rank_trains_exactly_as_train_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' loop (:func:`train_shard`) on one rank is :func:`train_detector`, bit for bit: the same
    schedule, learning rates, validation, best weights and early stopping (Ray runs it on each rank)."""
    config = _config("convres").replace(batch_size=4, epochs=50, max_steps=5, evaluations=5, stop_after=0)
    train, val = _set(10, 0, "p1"), _set(6, 1, "p2")
    with one_torch_thread():
        one = train_detector(train, val, config)
        shard = train_shard(train.images, validation_images(val, config), config, 0, 1, torch.device("cpu"))
        assert shard is not None and shard["history"] == one.history and shard["best"] == one.best_epoch
        state = one.model.state_dict()
        assert all(np.array_equal(shard["state"][k], state[k].numpy()) for k in state)
        # early stopping: a validation loss that only rises stops both after the same evaluations
        for module in (detector_module, train_ray):
            monkeypatch.setattr(module, "validation_loss", _Rising())
        patient = config.replace(max_steps=20, evaluations=20, stop_after=0.3)
        stopped = train_shard(train.images, validation_images(val, patient), patient, 0, 1, torch.device("cpu"))
        assert stopped is not None and stopped["history"] == train_detector(train, val, patient).history
        assert stopped["done"] == 7 and stopped["best"] == 0


# ----- the maths: three gloo ranks against one process (no Ray: the process group Ray Train sets up) -----


def _config(arch: str) -> DetectorConfig:
    return DetectorConfig.for_dims(2, [16, 16], arch=arch, embed_dim=16, batch_size=8, seed=3)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, 1, 16, 16)).astype(np.float32))


def _one_step(arch: str, n: int, rank: int, world: int, dtype: torch.dtype) -> tuple[float, dict[str, torch.Tensor]]:
    """One NT-Xent step's loss and parameter gradients on a batch of ``n`` in ``dtype`` (DDP over ``world`` ranks
    when more than one)."""
    config = _config(arch)
    torch.manual_seed(config.seed)
    module = build_encoder(config)
    shard = shard_layers(module)
    shard.world = world
    module.to(dtype)
    model = torch.nn.parallel.DistributedDataParallel(module) if world > 1 else module
    model.train()
    batch, views = _images(n, 0).to(dtype), _images(n, 1).to(dtype)
    loss = sharded_nt_xent(model, batch, views, NTXentLoss(temperature=config.temperature), shard, rank)
    loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _float64_steps(arch: str, rank: int, world: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """``F64_STEPS`` Adam steps of the detector's training (seeded batches, augmentation, dropout) in float64, on
    batches of 5."""
    config = _config(arch).replace(batch_size=5)
    x = _images(21, 2)
    torch.manual_seed(config.seed)
    module = build_encoder(config)
    shard = shard_layers(module)
    shard.world = world
    module.double()
    model = torch.nn.parallel.DistributedDataParallel(module) if world > 1 else module
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = NTXentLoss(temperature=config.temperature)
    transform = augmentation(config.augmentation, 2, config.image_size)
    transform.set_random_state(seed=config.seed)
    batches = batch_stream(len(x), config.batch_size, np.random.default_rng(config.seed))
    model.train()
    losses = []
    for _ in range(F64_STEPS):
        batch = x[next(batches)]
        views = augment_batch(transform, batch)
        loss = sharded_nt_xent(model, batch.double(), views.double(), loss_fn, shard, rank)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, {k: v.clone() for k, v in module.state_dict().items()}


def _rank(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "torch.distributed.nn.functional", FutureWarning)  # as the Ray workers do
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        found = {
            "step": {(*case, dtype): _one_step(*case, rank, world, dtype) for case in STEPS for dtype in DTYPES},
            "float64": {arch: _float64_steps(arch, rank, world) for arch in ARCHS},
        }
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(found, out)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(RANKS, str(folder / "store"), str(folder / "out.pt")), nprocs=RANKS)
    return dict(torch.load(folder / "out.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("arch", "n"), STEPS)
def test_ranks_take_one_process_gradient(ranks: dict[str, Any], arch: str, n: int, dtype: torch.dtype) -> None:
    """DDP averages the ranks' gradients and the all-gather's backward sums every rank's loss gradient: together
    one process's gradient, tensor by tensor (a gradient scaled by the ranks would be off by 200 %).

    float64: the same maths in another order, to 1e-10. float32 (the product's): as close as float32 computes
    either side; the worst is the batch of 2, whose BatchNorm at layer 4 (1 x 1) normalises 4 values per channel:
    one process's own float32 loss is 3e-5 from the float64 one there, and gradients differ up to 6e-4 of a tensor's
    largest entry. The gradient of a convolution's bias before BatchNorm is 0 in exact arithmetic: rounding noise on
    both sides, bounded by a share of the largest gradient anywhere.
    """
    loss, grads = ranks["step"][(arch, n, dtype)]
    with one_torch_thread():
        one_loss, one = _one_step(arch, n, 0, 1, dtype)
    # nt_xent, what train_detector steps on, is this one-rank loss exactly in float32
    if dtype == torch.float32:
        torch.manual_seed(_config(arch).seed)
        model = build_encoder(_config(arch)).train()
        loss_fn = NTXentLoss(temperature=_config(arch).temperature)
        with one_torch_thread():
            assert float(nt_xent(model, _images(n, 0), _images(n, 1), loss_fn).detach()) == one_loss
    loss_rel, grad_rel, noise = (1e-4, 2e-3, 1e-6) if dtype == torch.float32 else (1e-10, 1e-8, 1e-12)
    assert loss == pytest.approx(one_loss, rel=loss_rel)
    scale = max(float(g.abs().max()) for g in one.values())
    for name, g in one.items():
        tolerance = grad_rel * float(g.abs().max()) + noise * scale
        assert float((grads[name] - g).abs().max()) <= tolerance, name


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_ranks_train_as_one_process_in_float64(ranks: dict[str, Any], arch: str) -> None:
    """Without float32 rounding to amplify, several steps of the sharded training (seeded batches, augmentation,
    BatchNorm or dropout, Adam) are one process's training up to the order of float64 sums."""
    losses, state = ranks["float64"][arch]
    with one_torch_thread():
        one_losses, one_state = _float64_steps(arch, 0, 1)
    np.testing.assert_allclose(losses, one_losses, rtol=0, atol=1e-11)
    assert max(float((state[k].double() - one_state[k].double()).abs().max()) for k in state) < 1e-9


# ----- Ray Train: the product path against train_detector, on demo slices -----


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _demo(role: Role) -> ImageSet:
    return load_set(DEMO, PreprocessSpec((32, 32)), role=role)


@pytest.fixture(scope="module")
def trained(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo's slices at 32 x 32 (147 training, 59 validation): one detector trained here, one on 2 Ray
    workers, both with train_and_save at the same seed."""
    folder = tmp_path_factory.mktemp("ray-train")
    train, val = _demo(Role.TRAIN), _demo(Role.VAL)
    overrides = {"batch_size": 16, "max_steps": 4, "evaluations": 4, "stop_after": 0, "val_images": 32}
    start = time.perf_counter()
    with one_torch_thread():  # as each worker has
        one = train_and_save(train, val, folder / "one", seed=5, overrides=overrides)
    seconds_one = time.perf_counter() - start
    start = time.perf_counter()
    two = train_and_save(train, val, folder / "two", seed=5, overrides=overrides, ray="local", workers=2)
    seconds_two = time.perf_counter() - start
    print(f"one process {seconds_one:.1f} s, 2 Ray workers {seconds_two:.1f} s")
    return {"sets": (train, val), "one": one, "two": two, "folder": folder}


@pytest.mark.slow
def test_ray_workers_follow_one_process_loss_curve(trained: dict[str, Any]) -> None:
    one, two = trained["one"], trained["two"]
    assert [(h["epoch"], h["step"]) for h in two.history] == [(h["epoch"], h["step"]) for h in one.history]
    assert [h["step"] for h in one.history] == [1, 2, 3, 4]
    train_gap = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(one.history, two.history, strict=True)]
    val_gap = [abs(a["val_loss"] - b["val_loss"]) for a, b in zip(one.history, two.history, strict=True)]
    print("train loss gaps", [f"{g:.1e}" for g in train_gap], "validation loss gaps", [f"{g:.1e}" for g in val_gap])
    # the first step's loss is a forward pass of the same weights on the same batch and views: the sums' order
    # only (measured 8e-7 on a loss of 1.5); BatchNorm statistics per rank instead of the global batch's: 0.5 off
    assert train_gap[0] <= 1e-5 * one.history[0]["train_loss"]
    # later steps: float32 rounding amplified (see the module's text; measured up to 1.5e-2 on the training
    # batches' loss and 1.4e-3 on the validation loss, a mean over 32 fixed images)
    assert max(train_gap) <= 5e-2 and max(val_gap) <= 5e-3
    assert two.config == one.config and two.best_epoch == one.best_epoch
    assert two.provenance["workers"] == 2 and two.provenance["ray"]["address"] == "local"
    assert two.provenance["schedule"] == one.provenance["schedule"]
    loaded = load_detector(trained["folder"] / "two")  # saved as any other detector
    assert loaded.detector_hash == two.detector_hash and loaded.history == two.history


@pytest.mark.slow
def test_ray_trained_detector_makes_one_process_calls(trained: dict[str, Any]) -> None:
    """Planted copies (training slices with a little noise) and held-out slices as the synthetic set: both
    detectors find the same nearest training slice for each and call the same ones copies at their calibrated
    thresholds."""
    train, val = trained["sets"]
    rng = np.random.default_rng(0)
    planted = rng.choice(len(train), 12, replace=False)
    copies = train.images[planted] + rng.normal(0, 0.02, train.images[planted].shape).astype(np.float32)
    synthetic = np.concatenate([copies, val.images[::6]]).astype(np.float32)
    calls = {}
    for name in ("one", "two"):
        model = trained[name].model
        tables = search_all(embed(model, train.images), embed(model, val.images), embed(model, synthetic))
        tau = calibrate(ThresholdRule.PAPER, tables.train_to_val.best, tables.val_to_train.best, 95.0).value
        found = tables.synthetic_to_train
        calls[name] = (found.index[:, 0], is_copy(found.best, tau), tau)
        gap = found.similarity[:, 0] - found.similarity[:, 1]  # how clear the nearest training slice is
        margin, copies, others = np.abs(found.best - tau).min(), gap[:12].min(), gap[12:].min()
        print(f"{name}: tau {tau:.4f}, margin {margin:.1e}, top-2 gaps {copies:.1e} (copies) {others:.1e} (others)")
    (index_one, flags_one, tau_one), (index_two, flags_two, tau_two) = calls["one"], calls["two"]
    np.testing.assert_array_equal(flags_two, flags_one)
    # the training slice a call names; a held-out slice's nearest one is no call, and can be a near tie between two
    # neighbouring slices (1e-4 apart here), which float32 rounding may order either way
    np.testing.assert_array_equal(index_two[flags_one], index_one[flags_one])
    assert tau_two == pytest.approx(tau_one, abs=1e-3)
    np.testing.assert_array_equal(index_one[:12], planted)  # the calls are about something: copies are found
    assert flags_one[:12].all() and not flags_one[12:].all()


def test_train_detector_passes_ray_and_workers_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``train-detector --ray ADDRESS --workers N`` reaches the Ray path (which the tests above run)."""
    from core import cli
    from core.detect import train_ray

    seen: dict[str, Any] = {}

    def fake(train: ImageSet, val: ImageSet, config: DetectorConfig, address: str, workers: int, *args: Any) -> Any:
        seen.update(address=address, workers=workers, device=args[1])
        raise MemoScopeError("stop here")

    monkeypatch.setattr(train_ray, "train_detector_on_ray", fake)
    monkeypatch.setattr("core.common.cluster.connect", lambda address, num_cpus=None: None)
    argv = ["train-detector", "--train", str(DEMO), "--val", str(DEMO), "--out", str(tmp_path / "d"), "--size", "16"]
    assert cli.main([*argv, "--ray", "auto", "--workers", "3"]) == 2
    assert seen == {"address": "auto", "workers": 3, "device": "auto"}
