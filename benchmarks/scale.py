"""Scale: memory of loading a set with and without spilling to a memory-mapped file, and exact against
approximate (HNSW) search, each pair measured in one run.

    PYTHONPATH=. .venv/bin/python benchmarks/scale.py [--images 4000] [--database 200000] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from core.detect.search import ExactIndex, HNSWIndex, SearchConfig, recall_at_1
from core.io.discover import discover
from core.io.load import load_records
from core.io.preprocessing import PreprocessSpec
from tools.readme_tables import markdown_table, write_result


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4000, help="64x64 images written and loaded")
    parser.add_argument("--database", type=int, default=200_000, help="training embeddings searched")
    parser.add_argument("--queries", type=int, default=5000)
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

    database, queries = _vectors(rng, args.database), _vectors(rng, args.queries)
    results = []
    for name, build in (
        ("exact (faiss flat)", lambda: ExactIndex(database, SearchConfig(k=5))),
        ("approximate (faiss HNSW, M 32, ef 256)", lambda: HNSWIndex(database, SearchConfig(k=5))),
    ):
        start = time.perf_counter()
        index = build()
        built = time.perf_counter() - start
        start = time.perf_counter()
        index.search(queries)
        searched = time.perf_counter() - start
        report = recall_at_1(index, database, queries, sample=1000)
        recall = "1 (exact)" if report.sample == 0 else f"{report.recall_at_1:.3f} on {report.sample}"
        short = f"{report.max_shortfall:.4f}"
        results.append([name, f"{built:.1f}", f"{searched:.2f}", f"{args.queries / searched:.0f}", recall, short])
        print(" | ".join(results[-1]), flush=True)
    exact_s, approx_s = float(results[0][2]), float(results[1][2])
    results.append(["approximate / exact search time", "", f"{approx_s / exact_s:.2f}x", "", "", ""])
    search = markdown_table(
        [
            f"index over {args.database} x 128",
            "build s",
            f"search {args.queries} queries s",
            "queries/s",
            "recall@1",
            "largest correlation shortfall",
        ],
        results,
    )
    print(memory + "\n" + search)
    if args.write:
        command = (
            f"PYTHONPATH=. .venv/bin/python benchmarks/scale.py --images {args.images} --database {args.database} "
            f"--queries {args.queries} --write"
        )
        path = write_result("scale", memory + "\n" + search, command, "2 CPU threads.")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
