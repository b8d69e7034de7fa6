"""Scale: memory of loading a set with and without spilling to a memory-mapped file, and exact against approximate
search (:mod:`core.detect.search`), each measured in one run.

Search: for each data set and database size, exact search (faiss flat) and the approximate indexes at their default
settings, calibrated on the queries to recall@1 >= ``target_recall`` (0.99): the settings the calibration reached
(or the exact fallback), the recall@1 it measured on its sample and the recall@1 over every query against the exact
answers, build and search seconds (search including the calibration) and the peak resident memory above the data.
Data sets (128-d, seeded):

- ``clusters``: the vectors this benchmark has always used, 2,000 Gaussian clusters (noise 0.5); the queries come
  from 2,000 *other* clusters, so no query has a near copy and its nearest neighbour is one of many near-ties at
  correlation ~0.4: as hard as Gaussian noise for an approximate index.
- ``patients``: as a detector embeds scans: each patient's slices follow a smooth path through a 16-d latent space
  (neighbouring slices correlated, 50 a patient), mapped to 128-d plus noise; a fifth of the queries are near-copies
  of training slices, the rest slices of new patients.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/scale.py [--images 4000] [--sizes 200000,1000000]
        [--queries 5000] [--hnsw-up-to 200000] [--write]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.detect.search import (
    ApproximateIndex,
    ExactIndex,
    HNSWIndex,
    IVFIndex,
    Neighbors,
    SearchConfig,
    agreement,
    search_report,
)
from core.io.discover import discover
from core.io.load import load_records
from core.io.preprocessing import PreprocessSpec
from tools.readme_tables import markdown_table, write_result

Data = Callable[[int, int, int], tuple[np.ndarray, np.ndarray]]


def _load_peak(folder: Path, budget: int) -> tuple[float, float, str]:
    """Peak traced memory (MiB) and seconds to load ``folder`` with a memory budget of ``budget`` bytes."""
    records = discover(folder)
    tracemalloc.start()
    start = time.perf_counter()
    loaded = load_records(records, PreprocessSpec((64, 64)), str(folder), budget=budget)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kind = "memory-mapped" if isinstance(loaded.images, np.memmap) else "in memory"
    del loaded
    return peak / 2**20, seconds, kind


def _vectors(rng: np.random.Generator, n: int, d: int = 128, clusters: int = 2000) -> np.ndarray:
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    return centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)


def clusters(n: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's clustered vectors; the queries from other clusters (see the module docstring)."""
    rng = np.random.default_rng(seed)
    return _vectors(rng, n), _vectors(rng, queries)


def patients(
    n: int, queries: int, seed: int, d: int = 128, latent: int = 16, slices: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Patients' slices along smooth latent paths; a fifth of the queries near-copies (see the module docstring)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(latent, d)).astype(np.float32)

    def paths(count: int) -> np.ndarray:
        steps = np.cumsum(0.08 * rng.standard_normal((count, slices, latent), dtype=np.float32), axis=1)
        return (rng.standard_normal((count, 1, latent), dtype=np.float32) + steps).reshape(-1, latent)

    def embed(z: np.ndarray) -> np.ndarray:
        return z @ basis + 0.3 * rng.standard_normal((len(z), d), dtype=np.float32)

    z = paths(n // slices + 1)[:n]
    copies = z[rng.choice(n, queries // 5, replace=False)]
    copies = copies + 0.02 * rng.standard_normal(copies.shape, dtype=np.float32)
    fresh = paths((queries - len(copies)) // slices + 1)[: queries - len(copies)]
    return embed(z), embed(np.concatenate([copies, fresh]))


MAKERS: dict[str, Data] = {"clusters": clusters, "patients": patients}


def _rss() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB (``VmRSS``, ``VmHWM``)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@dataclass(frozen=True)
class Measured:
    kind: str
    sample: str  # the recall@1 the index recorded, on its calibration sample
    found: Neighbors
    build_s: float
    search_s: float
    peak_mib: float  # above the process's memory once the data was made


INDEXES: dict[str, type[ExactIndex] | type[ApproximateIndex]] = {
    "exact": ExactIndex,
    "IVF": IVFIndex,
    "HNSW": HNSWIndex,
}


def measure(index_name: str, data: str, size: int, queries: int) -> Measured:
    """Make the data, build the index and search (run in a fresh process, so that its peak memory is its own)."""
    database, query = MAKERS[data](size, queries, 0)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from the current RSS
    before, _ = _rss()
    start = time.perf_counter()
    index = INDEXES[index_name](database, SearchConfig(k=5))
    built = time.perf_counter() - start
    start = time.perf_counter()
    found = index.search(query)
    searched = time.perf_counter() - start
    peak = _rss()[1] - before
    report = search_report(index)
    sample = f"{report.recall_at_1:.3f} on {report.sample}" if report.sample else "1 (exact)"
    return Measured(index.kind, sample, found, built, searched, peak)


def search_rows(data: str, size: int, queries: int, hnsw_up_to: int) -> list[list[str]]:
    """One row per index over ``size`` rows of ``data``: exact, IVF, and HNSW up to ``hnsw_up_to`` rows."""
    names = ["exact", "IVF"] + (["HNSW"] if size <= hnsw_up_to else [])
    rows, exact = [], None
    for name in names:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            got = pool.submit(measure, name, data, size, queries).result()
        exact = exact or got
        recall_all, _ = agreement(got.found, exact.found)
        total = (got.build_s + got.search_s) / (exact.build_s + exact.search_s)
        rows.append(
            [
                data,
                f"{size:,}",
                "128",
                got.kind,
                got.sample,
                f"{recall_all:.3f}",
                f"{got.build_s:.1f}",
                f"{got.search_s:.1f}",
                f"{total:.2f}x",
                f"{got.peak_mib:.0f}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4000, help="64x64 images written and loaded")
    parser.add_argument("--sizes", default="200000,1000000", help="database rows searched, comma-separated")
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--hnsw-up-to", type=int, default=200_000, help="build HNSW only up to this many rows")
    parser.add_argument("--data", default="clusters,patients", help="data sets: clusters, patients")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "set"
        for i in range(args.images):
            (folder / f"p{i % 50:02d}").mkdir(parents=True, exist_ok=True)
            np.save(folder / f"p{i % 50:02d}" / f"{i:05d}.npy", rng.random((64, 64), dtype=np.float32))
        full = args.images * 64 * 64 * 4
        for budget in (full * 2, 16 * 2**20):
            peak, seconds, kind = _load_peak(folder, budget)
            label = f"{args.images} images, budget {budget / 2**20:.0f} MiB"
            rows.append([label, kind, f"{peak:.0f}", f"{seconds:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    memory = markdown_table(["load", "result", "peak traced MiB", "s"], rows)

    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        for data in args.data.split(","):
            results += search_rows(data, size, args.queries, args.hnsw_up_to)
    search = markdown_table(
        [
            "data",
            "rows",
            "dims",
            "index (settings reached)",
            "recall@1 measured (calibration sample)",
            f"recall@1 all {args.queries} queries",
            "build s",
            f"search {args.queries} queries s (incl. calibration)",
            "build + search / exact",
            "peak MiB above the data",
        ],
        results,
    )
    print(memory + "\n" + search)
    if args.write:
        command = (
            f"PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/scale.py --images {args.images} --sizes {args.sizes} "
            f"--queries {args.queries} --hnsw-up-to {args.hnsw_up_to} --data {args.data} --write"
        )
        notes = "2 CPU threads, shared with other jobs (timings vary by 2x between runs). Default search settings."
        path = write_result("scale", memory + "\n" + search, command, notes)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
