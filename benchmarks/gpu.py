"""The GPU checks of issue 13, each beside its reference measured in the same run (run by ``benchmarks/gpu_check.sh``).

1. Generation (2D demo LDM, 50 DDIM steps): a large batch on the GPU, one sample at a time on the GPU, and the
   machine's CPU cores at the CPU batch.
2. Seeds mean the same on any device: the same seeds sampled on the GPU and on the CPU (mean and largest absolute
   difference as a share of the [-1, 1] range), and the study's copy call on both sample sets (same calls?).
3. Detector training: epochs on the GPU against the same epochs on the CPU cores; embedding in bf16 autocast against
   fp32 (mixed precision is kept only where it is faster).
4. Exact search on the GPU (torch chunked matmul + top-k) against the GPU's own matmul rate.
5. Loading files with worker processes against one process (the machine's CPU cores; measured first).
6. Generation with the denoiser compiled (``torch.compile``, CUDA graphs) against the same batch not compiled.

Writes ``benchmarks/results/gpu.md``. ``--device cpu`` runs every step on the CPU (a check that the script works on a
machine without a GPU; the ratios are then meaningless).

    PYTHONPATH=. python benchmarks/gpu.py [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from core.common.devices import device_description, resolve_device
from core.detect.detector import DetectorConfig, build_encoder, embed, load_detector, train_detector
from core.detect.metrics import is_copy
from core.detect.search import SearchConfig, TorchIndex
from core.detect.verify import best_match
from core.generative.ldm import SchedulerName, load_ldm
from core.generative.sample import compile_denoiser, sample, sample_seed
from core.study.results import ScanResults
from core.study.review import load_study_set
from tools.readme_tables import REPO, markdown_table, write_result

LDM_2D = REPO / "checkpoints" / "demo-2d-aug-e2000"
STUDY_2D = REPO / "studies" / "demo-2d"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(
    device: torch.device, seeds: list[int], batch: int, steps: int, compiled: bool = False
) -> tuple[float, np.ndarray]:
    """Samples per second drawing ``seeds`` ``batch`` at a time on ``device``, and the samples; ``compiled``: with
    the denoiser compiled (the compilation is paid in the warm-up, at the measured batch size)."""
    ldm = load_ldm(LDM_2D, device)
    if compiled:
        ldm = compile_denoiser(ldm, device)
    sample(ldm, seeds[: batch if compiled else min(batch, 8)], 2, SchedulerName.DDIM, device)  # warm-up
    _sync(device)
    start = time.perf_counter()
    out = [sample(ldm, seeds[b : b + batch], steps, SchedulerName.DDIM, device) for b in range(0, len(seeds), batch)]
    _sync(device)
    return len(seeds) / (time.perf_counter() - start), np.concatenate(out)


def copy_calls(images: np.ndarray, device: torch.device) -> np.ndarray:
    """The committed 2D study's copy call (its method, detector and threshold) on ``images``."""
    scan = ScanResults.open(STUDY_2D)
    summary = scan.summary
    detector = load_detector(scan.detector_folder)
    train = load_study_set(summary, "train")
    q_vec = embed(detector.model, images, device=device)
    db_vec = embed(detector.model, np.asarray(train.images), device=device)
    found = best_match(summary.method, q_vec, db_vec, images, train.images, None, str(device))
    return is_copy(found.best, summary.tau)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cpu = torch.device("cpu")
    steps = 50
    big = 64 if args.quick else 1024
    rows = []

    notes = f"{device_description(device)}; {os.cpu_count()} CPU cores."
    command = f"PYTHONPATH=. python benchmarks/gpu.py --device {args.device}" + (" --quick" if args.quick else "")
    name = "gpu" if device.type == "cuda" else "gpu_dry_run"

    def row(*cells: object) -> None:
        rows.append([str(c) for c in cells])
        print(" | ".join(rows[-1]), flush=True)
        # rewritten after every row: a run cut short by its time limit keeps what it measured
        write_result(
            name, markdown_table(["check", "figure", "reference (same run)", "ratio", "target"], rows), command, notes
        )

    from benchmarks.ratios import loading_row

    row(*loading_row(args.quick))  # first, before anything starts threads: the machine's cores reading files

    seeds = [sample_seed(0, i) for i in range(big)]
    fast, _ = rate(device, seeds, big, steps)
    one, _ = rate(device, seeds[:8], 1, steps)
    cpu_rate, _ = rate(cpu, seeds[:64] if not args.quick else seeds[:8], 32, steps)
    row(
        f"generation, batch {big}, {steps} DDIM steps",
        f"{fast:.0f} samples/s",
        f"one at a time {one:.1f}/s",
        f"{fast / one:.0f}x",
        ">= 2,500/s, >= 20x",
    )
    row(
        "same against the CPU cores (batch 32)",
        f"{fast:.0f} samples/s",
        f"CPU {cpu_rate:.1f}/s",
        f"{fast / cpu_rate:.0f}x",
        "",
    )

    n_check = 16 if args.quick else 64
    _, on_device = rate(device, seeds[:n_check], n_check, steps)
    _, on_cpu = rate(cpu, seeds[:n_check], n_check, steps)
    diff = np.abs(on_device - on_cpu)
    row(
        f"same seeds on {device.type} and cpu ({n_check} samples)",
        f"mean abs difference {diff.mean() / 2:.3%} of the range",
        f"largest {diff.max() / 2:.3%}",
        "",
        "mean <= 1 %",
    )
    calls_device, calls_cpu = copy_calls(on_device, device), copy_calls(on_cpu, cpu)
    row(
        "copy calls on those samples (demo-2d study)",
        f"{int(calls_device.sum())} copies on {device.type}",
        f"{int(calls_cpu.sum())} on cpu",
        f"{int((calls_device == calls_cpu).sum())}/{n_check} agree",
        "all agree",
    )

    scan = ScanResults.open(STUDY_2D)
    train, val = load_study_set(scan.summary, "train"), load_study_set(scan.summary, "val")
    epochs = 1 if args.quick else 3
    config = DetectorConfig.for_dims(2, list(train.images.shape[2:]), epochs=epochs, batch_size=64)

    def train_seconds(on: torch.device) -> float:
        start = time.perf_counter()
        train_detector(train, val, config, device=on)
        _sync(on)
        return time.perf_counter() - start

    t_device, t_cpu = train_seconds(device), train_seconds(cpu)
    row(
        f"detector training, {epochs} epochs on {len(train)} images",
        f"{t_device:.1f} s on {device.type}",
        f"{t_cpu:.1f} s on {os.cpu_count()} CPU cores",
        f"{t_cpu / t_device:.1f}x",
        ">= 10x",
    )

    encoder = build_encoder(DetectorConfig.for_dims(2, [64, 64])).eval()
    images = np.random.default_rng(1).uniform(-1, 1, (512 if args.quick else 8192, 1, 64, 64)).astype(np.float32)
    rates = {}
    for precision in ("fp32", "bf16"):
        embed(encoder, images[:256], 256, device, precision)  # warm-up
        _sync(device)
        start = time.perf_counter()
        embed(encoder, images, 256, device, precision)
        _sync(device)
        rates[precision] = len(images) / (time.perf_counter() - start)
    row(
        f"embedding {len(images)} 64x64 images, ResNet-18, batch 256, bf16 autocast",
        f"{rates['bf16']:.0f} images/s",
        f"fp32 {rates['fp32']:.0f} images/s",
        f"{rates['bf16'] / rates['fp32']:.2f}x",
        "faster, or keep fp32",
    )

    n_q, n_db, dim = (2000, 100_000, 128) if args.quick else (20_000, 1_000_000, 128)
    rng = np.random.default_rng(0)
    database, queries = rng.normal(size=(n_db, dim)).astype(np.float32), rng.normal(size=(n_q, dim)).astype(np.float32)
    a = torch.randn(4096, 4096, device=device)
    a @ a
    _sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    _sync(device)
    bound = 10 * 2 * 4096**3 / (time.perf_counter() - start) / 1e9
    index = TorchIndex(database, SearchConfig(k=5, device=str(device), chunk_size=8192))
    index.search(queries[:100])
    start = time.perf_counter()
    index.search(queries)
    seconds = time.perf_counter() - start
    achieved = 2 * n_q * n_db * dim / seconds / 1e9
    row(
        f"exact search {n_q} x {n_db} x {dim} (torch)",
        f"{achieved:.0f} GFLOP/s ({seconds:.2f} s)",
        f"4096^3 matmul {bound:.0f} GFLOP/s",
        f"{achieved / bound:.0%}",
        "",
    )

    # last: compiling takes minutes, and a run cut short by its limit keeps every row above
    start = time.perf_counter()
    compiled, _ = rate(device, seeds, big, steps, compiled=True)
    row(
        f"generation, batch {big}, denoiser compiled ({'CUDA graphs' if device.type == 'cuda' else 'inductor'})",
        f"{compiled:.0f} samples/s",
        f"not compiled {fast:.0f}/s",
        f"{compiled / fast:.2f}x",
        f">= 2,500/s (compiling and warm-up {time.perf_counter() - start:.0f} s)",
    )
    print(markdown_table(["check", "figure", "reference (same run)", "ratio", "target"], rows))


if __name__ == "__main__":
    main()
