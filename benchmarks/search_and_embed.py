"""Exact search (faiss vs numpy brute force) and embedding throughput, printed as tables.

Timings are printed, never asserted. Usage: PYTHONPATH=. .venv/bin/python benchmarks/search_and_embed.py [--write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from core.detect.detector import DetectorConfig, build_encoder, embed
from core.detect.search import SearchConfig, brute_force, search
from tools.readme_tables import markdown_table, write_result


def _time(fn, repeat: int = 1) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def search_table() -> tuple[list[str], list[list[str]]]:
    header = ["queries x database", "faiss (chunked) s", "numpy brute force s", "numpy / faiss"]
    print("exact top-10 search, d = 128 (seconds; same results checked)")
    print(" | ".join(header))
    rows = []
    rng = np.random.default_rng(0)
    for n_query, n_db in ((1_000, 1_000), (1_000, 10_000), (5_000, 20_000)):
        q = rng.normal(size=(n_query, 128)).astype(np.float32)
        db = rng.normal(size=(n_db, 128)).astype(np.float32)
        config = SearchConfig(k=10, chunk_size=2048)
        t_faiss = _time(lambda: search(q, db, config), 2)  # noqa: B023 - called at once
        t_numpy = _time(lambda: brute_force(q, db, 10))  # noqa: B023
        assert np.array_equal(search(q, db, config).index[:, 0], brute_force(q, db, 10).index[:, 0])
        rows.append([f"{n_query} x {n_db}", f"{t_faiss:.3f}", f"{t_numpy:.3f}", f"{t_numpy / t_faiss:.1f}x"])
        print(" | ".join(rows[-1]))
    return header, rows


def embed_table() -> tuple[list[str], list[list[str]]]:
    header = ["encoder", "input", "images/s"]
    print(f"\nembedding throughput (images/s, CPU threads = {torch.get_num_threads()})")
    print(" | ".join(header))
    rows = []
    for dims, size, arch, n in (
        (2, 64, "resnet18", 256),
        (2, 128, "resnet18", 128),
        (2, 64, "resnet50", 128),
        (3, 32, "convres", 64),
        (3, 64, "convres", 16),
    ):
        config = DetectorConfig.for_dims(dims, [size] * dims, arch=arch)
        model = build_encoder(config)
        images = np.random.default_rng(0).uniform(-1, 1, (n, 1, *[size] * dims)).astype(np.float32)
        embed(model, images[:8])
        seconds = _time(lambda: embed(model, images, batch_size=32))  # noqa: B023 - called at once
        rows.append([f"{arch} {dims}D", "x".join([str(size)] * dims), f"{n / seconds:.0f}"])
        print(" | ".join(rows[-1]))
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--write", action="store_true", help="write benchmarks/results/search_and_embed.md for the README"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    search = search_table()
    embedding = embed_table()
    if args.write:
        table = markdown_table(*search) + "\n" + markdown_table(*embedding)
        command = "PYTHONPATH=. .venv/bin/python benchmarks/search_and_embed.py --write"
        print(f"wrote {write_result('search_and_embed', table, command, f'{torch.get_num_threads()} CPU threads.')}")


if __name__ == "__main__":
    main()
