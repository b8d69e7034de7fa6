"""Past one machine: pipeline stages fan out over a Ray cluster (Ray Core actors), never a scheduler of our own.

A stage is a class whose constructor loads what it needs once (a checkpoint, a detector) and whose ``run``
method maps one batch to its result. :func:`map_batches` starts one such actor per worker (one GPU each when
the cluster has GPUs) and streams the batches through Ray's ``ActorPool`` in order, so the driver can write
results as they arrive. Seeds are per sample (see :mod:`core.generative.sample`), so which worker computes a
batch never changes a result.

``address``: ``local`` starts a private Ray instance on this machine (tests, one workstation); ``auto`` or
``ray://host:port`` joins a running cluster. Ray is imported only when a stage is sent to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from core.common.errors import MemoScopeError


def connect(address: str, num_cpus: int | None = None) -> Any:
    """Initialise Ray once for this process (``local``: a private instance; else a cluster address)."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is pinned in requirements.txt
        raise MemoScopeError("--ray needs the ray package (pip install -r requirements.txt).") from exc
    if not ray.is_initialized():
        try:
            if address == "local":
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MemoScopeError(
                f"--ray {address}: cannot reach a Ray cluster there ({exc}); start one with `ray start --head` or "
                "use --ray local."
            ) from exc
    return ray


def cluster_gpus(ray: Any) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def _shared(ray: Any, args: tuple[Any, ...], stored: dict[int, Any]) -> tuple[Any, ...]:
    """``args`` with each large one (over 1 MiB: a training set's images) put into Ray's object store once, so every
    actor or task that receives the same object shares one copy."""

    def put(a: Any) -> Any:
        if getattr(a, "nbytes", 0) <= 1 << 20:
            return a
        if id(a) not in stored:
            stored[id(a)] = ray.put(a)
        return stored[id(a)]

    return tuple(put(a) for a in args)


def run_tasks(fn: Any, calls: list[tuple[Any, ...]], address: str) -> list[Any]:
    """``fn(*args)`` for every ``args`` in ``calls`` as Ray tasks (one GPU each when the cluster has any), results in
    call order."""
    ray = connect(address)
    remote = ray.remote(num_gpus=1 if cluster_gpus(ray) else 0, num_cpus=1)(fn)
    stored: dict[int, Any] = {}
    return list(ray.get([remote.remote(*_shared(ray, args, stored)) for args in calls]))


def map_batches(
    stage: type,
    init: tuple[Any, ...],
    batches: Iterable[Any],
    address: str,
    workers: int = 0,
) -> Iterator[Any]:
    """``stage(*init).run(batch)`` for every batch, on Ray actors, results in batch order.

    ``workers``: actors to start (0: one per GPU in the cluster, or 2 on a cluster without GPUs). Each actor
    asks for one GPU when the cluster has any.
    """
    ray = connect(address)
    gpus = cluster_gpus(ray)
    count = workers or max(gpus, 2)
    remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(stage)
    shared = _shared(ray, init, {})
    actors = [remote.remote(*shared) for _ in range(count)]
    pool = ray.util.ActorPool(actors)
    try:
        yield from pool.map(lambda actor, batch: actor.run.remote(batch), batches)
    finally:
        for actor in actors:
            ray.kill(actor)
