"""One table of MemoScope's speed and memory, each figure beside a reference measured in the same run, and the ratio.

Rows (issue 13): batched against one-at-a-time generation; GPU against CPU generation when a GPU is present; exact
search against the machine's compute bound (the FLOP rate of a 4096^3 float32 matrix product, applied to 2*Nq*Nd*d);
embedding against the encoder's bare forward pass; peak memory of a scan at N and 10N images; a threshold recount on
1M pairs from sorted arrays against a full recount; the app's first render against a bare Streamlit page.
Timings are printed and written to ``benchmarks/RESULTS.md``, never asserted.

    PYTHONPATH=. .venv/bin/python benchmarks/ratios.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.common.devices import device_description
from core.common.provenance import atomic_write_text
from core.detect.detector import DetectorConfig, build_encoder, embed
from core.detect.search import ExactIndex, SearchConfig, TorchIndex
from core.generative.ldm import SchedulerName, load_ldm
from core.generative.sample import compile_denoiser, sample, sample_seed
from core.study.results import Calibration
from core.study.review import live_metrics
from tools.readme_tables import REPO, markdown_table, write_result

LDM_2D = REPO / "checkpoints" / "demo-2d-aug-e2000"
DETECTOR_2D = REPO / "checkpoints" / "demo-2d-detector"
HEADER = ["measure", "figure", "reference (same run)", "ratio", "issue 13 target"]


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs, in seconds (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass(frozen=True)
class Paired:
    """A figure and its reference timed in adjacent pairs: each pair sees the same state of the machine.

    Attributes:
        figure, reference: the times of the median pair (the pair whose ratio is the median), in seconds, so the
            figure, the reference and the ratio in a row agree with each other.
        ratios: ``reference / figure`` of each pair (above 1: the figure is faster).
    """

    figure: float
    reference: float
    ratios: list[float]

    def ratio_text(self, percent: bool = False) -> str:
        """The median ratio and the range over the pairs, e.g. ``92 % (84-101 %, 5 pairs)``."""
        mid, low, high = statistics.median(self.ratios), min(self.ratios), max(self.ratios)
        if percent:
            return f"{mid:.0%} ({low:.0%}-{high:.0%}, {len(self.ratios)} pairs)"
        return f"{mid:.2f}x ({low:.2f}-{high:.2f}x, {len(self.ratios)} pairs)"


def paired(figure: Callable[[], object], reference: Callable[[], float], pairs: int = 5) -> Paired:
    """Time ``figure`` and ``reference`` alternately (an odd number of pairs); ``reference`` returns its own seconds.

    This shared machine's speed drifts within a minute, so the two measured one after the other gave ratios from
    84 % to 120 % with no change to the code; the median of adjacent pairs, with its range, says how far one run
    can be trusted."""
    timed = []
    for _ in range(pairs):
        fig = best_of(figure, 1)
        timed.append((fig, reference()))
    middle = sorted(timed, key=lambda t: t[1] / t[0])[len(timed) // 2]
    return Paired(middle[0], middle[1], [r / f for f, r in timed])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampler(ldm_folder: Path, device: torch.device, batch: int, compiled: bool = False) -> Callable[[int, int], float]:
    """A loaded, warmed-up sampler at ``batch`` (the warm-up pays any compilation): called with ``(n, steps)``, it
    generates ``n`` samples and returns the seconds per sample."""
    ldm = load_ldm(ldm_folder, device)
    if compiled:
        ldm = compile_denoiser(ldm, device)
    sample(ldm, [sample_seed(0, i) for i in range(batch)], 2, SchedulerName.DDIM, device)  # kernels, allocator
    _sync(device)

    def run(n: int, steps: int) -> float:
        seeds = [sample_seed(0, i) for i in range(n)]
        start = time.perf_counter()
        for b in range(0, n, batch):
            sample(ldm, seeds[b : b + batch], steps, SchedulerName.DDIM, device)
        _sync(device)
        return (time.perf_counter() - start) / n

    return run


def samples_per_second(ldm_folder: Path, device: torch.device, n: int, batch: int, steps: int) -> float:
    """Samples per second at ``batch`` after a warm-up."""
    return 1 / sampler(ldm_folder, device, batch)(n, steps)


def generation_rows(quick: bool) -> list[list[str]]:
    steps = 50
    n, batch = (8, 8) if quick else (32, 32)
    cpu = torch.device("cpu")
    one, batched = sampler(LDM_2D, cpu, 1), sampler(LDM_2D, cpu, batch)
    compiled = sampler(LDM_2D, cpu, batch, compiled=True)
    n_one = max(2, n // 8)  # one at a time is slow: fewer samples, scaled to n
    vs_one = paired(lambda: batched(n, steps), lambda: one(n_one, steps) * n)
    vs_eager = paired(lambda: compiled(n, steps), lambda: batched(n, steps) * n)
    rows = [
        [
            f"2D demo LDM, {steps} DDIM steps, CPU: batch {batch}",
            f"{n / vs_one.figure:.2f} samples/s",
            f"one at a time {n / vs_one.reference:.2f} samples/s",
            vs_one.ratio_text(),
            ">= 20x one at a time (GPU)",
        ],
        [
            f"same, denoiser compiled (generate --compile; inductor), batch {batch}",
            f"{n / vs_eager.figure:.2f} samples/s",
            f"not compiled {n / vs_eager.reference:.2f} samples/s",
            vs_eager.ratio_text(),
            "faster once compiled (CUDA graphs on a GPU: benchmarks/gpu_check.sh)",
        ],
    ]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        gpu_n = 1024 if not quick else 64
        on_gpu = samples_per_second(LDM_2D, gpu, gpu_n, gpu_n, steps)
        gpu_one = samples_per_second(LDM_2D, gpu, 8, 1, steps)
        rows.append(
            [
                f"same, {device_description(gpu)}: batch {gpu_n}",
                f"{on_gpu:.0f} samples/s",
                f"one at a time on the GPU {gpu_one:.1f} samples/s",
                f"{on_gpu / gpu_one:.0f}x",
                ">= 2,500 samples/s and >= 20x",
            ]
        )
        rows.append(
            [
                "GPU against this machine's CPU (same LDM)",
                f"{on_gpu:.0f} samples/s",
                f"CPU batch {batch} {n / vs_one.figure:.2f} samples/s",
                f"{on_gpu * vs_one.figure / n:.0f}x",
                "",
            ]
        )
    else:
        rows.append(["GPU against CPU generation", "no GPU on this machine", "", "", "see benchmarks/gpu_check.sh"])
    return rows


def matmul_gflops(size: int = 4096, repeat: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = best_of(lambda: a @ b, repeat)
    return 2 * size**3 / seconds / 1e9


def search_rows(quick: bool) -> list[list[str]]:
    n_db, dim = (50_000 if quick else 200_000), 128
    rng = np.random.default_rng(0)
    database = rng.normal(size=(n_db, dim)).astype(np.float32)
    rows = []
    cases: list[tuple[int, str, type[ExactIndex | TorchIndex]]] = [
        (1000 if quick else 5000, "faiss flat (the CPU default)", ExactIndex),
        (512, "faiss flat", ExactIndex),
    ]
    cases.append((cases[0][0], "torch chunked matmul + top-k", TorchIndex))
    for n_query, name, cls in cases:
        queries = rng.normal(size=(n_query, dim)).astype(np.float32)
        index = cls(database, SearchConfig(k=5))
        # the search and its bound alternate: the bound is the time the 4096^3 rate predicts for this search
        flops = 2 * n_query * n_db * dim
        timed = paired(lambda: index.search(queries), lambda: flops / (matmul_gflops(repeat=1) * 1e9))  # noqa: B023
        rate = flops / timed.figure / 1e9
        rows.append(
            [
                f"exact top-5 search {n_query} x {n_db} x {dim}, {name}",
                f"{rate:.1f} GFLOP/s ({timed.figure:.2f} s)",
                f"4096^3 matmul {flops / timed.reference / 1e9:.1f} GFLOP/s",
                timed.ratio_text(percent=True),
                ">= 80 % of the bound",
            ]
        )
    return rows


def embedding_row(quick: bool) -> list[str]:
    n, batch = (256, 64) if quick else (1024, 64)
    config = DetectorConfig.for_dims(2, [64, 64])
    model = build_encoder(config).eval()
    images = np.random.default_rng(0).uniform(-1, 1, (n, 1, 64, 64)).astype(np.float32)
    tensors = [torch.from_numpy(images[s : s + batch]) for s in range(0, n, batch)]

    def bare() -> None:
        with torch.inference_mode():
            for x in tensors:
                model(x)

    embed(model, images[:batch], batch_size=batch)  # warm-up
    timed = paired(lambda: embed(model, images, batch_size=batch), lambda: best_of(bare, 1))
    return [
        f"embedding {n} 64x64 images, ResNet-18 (batch {batch})",
        f"{n / timed.figure:.0f} images/s",
        f"bare forward {n / timed.reference:.0f} images/s",
        timed.ratio_text(percent=True),
        ">= 90 % of the bare forward",
    ]


def loading_row(quick: bool) -> list[str]:
    """Reading and preprocessing NIfTI volumes with the default worker processes against in this process."""
    import nibabel as nib

    from core.io.discover import discover
    from core.io.load import PARALLEL_FROM, load_records, load_workers
    from core.io.preprocessing import PreprocessSpec

    n = PARALLEL_FROM if quick else 96
    rng = np.random.default_rng(0)
    spec = PreprocessSpec((32, 32, 32))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            folder = Path(tmp) / f"p{i:03d}"
            folder.mkdir()
            volume = rng.random((128, 128, 96), dtype=np.float32)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "t1.nii.gz")
        records = discover(tmp)
        workers = load_workers()
        times: dict[int, list[float]] = {workers: [], 0: []}
        for _ in range(3):  # alternated, fastest kept: this shared machine's speed drifts within a minute
            for count in (workers, 0):
                start = time.perf_counter()
                load_records(records, spec, tmp, workers=count)
                times[count].append(time.perf_counter() - start)
        t_workers, t_here = min(times[workers]), min(times[0])
    return [
        f"loading {n} NIfTI volumes 128x128x96 -> 32^3, {workers} worker processes",
        f"{n / t_workers:.1f} volumes/s",
        f"in this process {n / t_here:.1f}/s",
        f"{t_here / t_workers:.2f}x",
        "faster than one process (scales with cores)",
    ]


def _write_set(folder: Path, n: int, rng: np.random.Generator, patients: int) -> None:
    for i in range(n):
        patient = folder / f"{folder.name}{i % patients:03d}"  # patients differ between sets
        patient.mkdir(parents=True, exist_ok=True)
        np.save(patient / f"{i:06d}.npy", rng.random((64, 64), dtype=np.float32))


def scan_peak_mib(root: Path, n: int) -> tuple[float, float, float]:
    """Peak resident memory (MiB), its growth above the imported libraries (MiB), and seconds of
    ``python -m core scan`` over N training, N synthetic and N/2 (at least 80) validation images (random 64x64), with
    the committed 2D detector; each scan runs in its own process."""
    rng = np.random.default_rng(n)
    sets = root / f"n{n}"
    _write_set(sets / "train", n, rng, patients=10)
    _write_set(sets / "val", max(n // 2, 80), rng, patients=4)
    _write_set(sets / "synthetic", n, rng, patients=1)
    # the child records its resident high-water mark after importing the libraries a scan uses, then runs the scan
    code = (
        "import sys, runpy, torch, monai.networks.nets, faiss, core.study.scan\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "base = hwm()\n"
        "sys.argv = ['core'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('core', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print('PEAK', hwm(), base)\n"
    )
    command = [sys.executable, "-c", code, "scan", "--detector", str(DETECTOR_2D), "--device", "cpu"]
    command += ["--train", str(sets / "train"), "--val", str(sets / "val"), "--synthetic", str(sets / "synthetic")]
    command += ["--out", str(sets / "study"), "--cache-dir", str(sets / "cache")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEMOSCOPE_SET_MEMORY_MB": "8", "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"scan of {n} failed: {done.stderr[-2000:]}")
    peak_kib, base_kib = (int(v) for v in done.stdout.split("PEAK")[-1].split()[:2])
    return peak_kib / 1024, (peak_kib - base_kib) / 1024, seconds


def memory_row(quick: bool) -> list[str]:
    n = 40 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        small, grew_small, t_small = scan_peak_mib(Path(tmp), n)
        large, grew_large, t_large = scan_peak_mib(Path(tmp), 10 * n)
    return [
        f"peak memory of a scan (default verified call), {10 * n} training + {10 * n} synthetic images",
        f"{large:.0f} MiB, {grew_large:.0f} above the libraries ({t_large:.0f} s)",
        f"{n} + {n} images: {small:.0f} MiB, {grew_small:.0f} above ({t_small:.0f} s)",
        f"{large / small:.2f}x",
        "<= 1.5x at 10x the images",
    ]


def recount_row() -> list[str]:
    rng = np.random.default_rng(0)
    arrays = [rng.uniform(0, 1, 250_000) for _ in range(4)]
    train_to_val, val_to_train, train_to_synthetic, synthetic_to_train = (np.sort(a) for a in arrays)
    cal = Calibration(train_to_val, val_to_train, train_to_synthetic, synthetic_to_train)
    taus = rng.uniform(0.5, 1.0, 100)

    def sorted_recount() -> None:
        for tau in taus:
            live_metrics(cal, float(tau))

    def full_recount() -> None:
        for tau in taus:
            [int(np.count_nonzero(a > tau)) for a in arrays]

    t_sorted = best_of(sorted_recount, 3) / len(taus)
    t_full = best_of(full_recount, 3) / len(taus)
    return [
        "threshold recount on 1M pairs (4 x 250k best correlations)",
        f"{t_sorted * 1e3:.3f} ms",
        f"full recount {t_full * 1e3:.2f} ms",
        f"{t_full / t_sorted:.0f}x faster",
        "<= 10 ms",
    ]


def app_row(quick: bool) -> list[str]:
    from benchmarks.app_start import measure

    app, bare = measure(1 if quick else 3)
    return [
        "app: first render of the Overview after the server is up (Chromium)",
        f"{statistics.median(app):.2f} s",
        f"bare Streamlit page {statistics.median(bare):.2f} s",
        f"{statistics.median(app) / statistics.median(bare):.2f}x",
        "< 5 s",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a check that the script runs)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (this machine has 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[list[str]] = []
    for make in (
        lambda: [loading_row(args.quick)],  # first: torch.compile (below) leaves threads, and then nothing forks
        lambda: generation_rows(args.quick),
        lambda: search_rows(args.quick),
        lambda: [embedding_row(args.quick)],
        lambda: [memory_row(args.quick)],
        lambda: [recount_row()],
        lambda: [app_row(args.quick)],
    ):
        for row in make():
            rows.append(row)
            print(" | ".join(row), flush=True)
    table = markdown_table(HEADER, rows)
    print("\n" + table)
    if args.write:
        command = "PYTHONPATH=. .venv/bin/python benchmarks/ratios.py --write"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        notes = (
            f"{os.cpu_count()} CPU cores, {args.threads} torch threads; this process peaked at {peak:.0f} MiB. "
            "CPU generation, search and embedding: figure, reference and ratio of the median of 5 adjacent figure/"
            "reference pairs, the ratios' range in brackets (this shared machine's speed drifts within a minute)."
        )
        pasted = write_result("ratios", table, command, notes)  # the README's copy
        text = (
            "# Benchmark results\n\nWritten by `make bench`; every reference was measured in the same run as its "
            "figure. GPU rows: `benchmarks/gpu_check.sh` writes `benchmarks/results/gpu.md` on a GPU machine.\n\n"
            + pasted.read_text(encoding="utf-8")
        )
        atomic_write_text(REPO / "benchmarks" / "RESULTS.md", text)
        print(f"wrote {pasted} and benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
