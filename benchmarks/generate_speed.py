"""Sampling speed: the batched sampler against stepping the scheduler once per sample, in one run.

Both produce the same samples for the same seeds (``tests/test_generate.py`` checks it); this measures what
batching the scheduler step buys, and how far the batch size helps, on the committed demo LDMs. Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/generate_speed.py [--device cpu] [--n 32] [--steps 20] [--write]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from core.common.devices import device_description, resolve_device
from core.generative.ldm import LDM, SchedulerName, build_scheduler, load_ldm
from core.generative.sample import sample, sample_seed
from tools.readme_tables import markdown_table, write_result

CHECKPOINTS = {"2D 64x64": "checkpoints/demo-2d-aug-e2000", "3D 32^3": "checkpoints/demo-3d-e1500"}


def per_sample_steps(ldm: LDM, seeds: list[int], steps: int, device: torch.device) -> np.ndarray:
    """The reference: the denoiser runs on the batch, but ``scheduler.step`` once per sample (MemoScope 0.2)."""
    scheduler = build_scheduler(ldm.config, SchedulerName.DDIM)
    scheduler.set_timesteps(num_inference_steps=steps, device=device)  # type: ignore[operator]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    latents = torch.stack([torch.randn(ldm.config.latent_shape, generator=g) for g in generators]).to(device)
    with torch.inference_mode():
        for t in scheduler.timesteps:
            eps = ldm.unet(latents, timesteps=torch.full((len(seeds),), int(t), device=device, dtype=torch.long))
            latents = torch.cat(
                [scheduler.step(eps[i : i + 1], int(t), latents[i : i + 1])[0] for i in range(len(seeds))]  # type: ignore[operator]
            )
        images = ldm.autoencoder.decode_stage_2_outputs(latents / ldm.config.scale_factor)
    return images.clamp(-1, 1).cpu().numpy()


def _rate(run: Callable[[list[int]], np.ndarray], n: int, batch: int, device: torch.device) -> tuple[float, np.ndarray]:
    """Samples per second generating ``n`` samples ``batch`` at a time, and the samples."""
    outputs = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in range(0, n, batch):
        outputs.append(run([sample_seed(0, i) for i in range(b, min(n, b + batch))]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start), np.concatenate(outputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=32, help="samples per measurement")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    rows = []
    for name, folder in CHECKPOINTS.items():
        ldm = load_ldm(folder, device)
        sample(ldm, [0], 2, SchedulerName.DDIM, device)  # warm-up
        for batch in args.batches:
            reference = partial(per_sample_steps, ldm, steps=args.steps, device=device)
            batched = partial(sample, ldm, steps=args.steps, scheduler_name=SchedulerName.DDIM, device=device)
            old, a = _rate(reference, args.n, batch, device)
            new, b = _rate(batched, args.n, batch, device)
            diff = float(np.abs(a - b).max())
            rows.append([name, batch, f"{old:.1f}", f"{new:.1f}", f"{new / old:.2f}x", f"{diff:.1e}"])
            print(" | ".join(map(str, rows[-1])), flush=True)
    header = ["LDM", "batch", "per-sample step /s", "batched step /s", "batched / per-sample", "max abs diff"]
    table = markdown_table(header, rows)
    print(table)
    if args.write:
        command = (
            f"PYTHONPATH=. .venv/bin/python benchmarks/generate_speed.py --device {args.device} --n {args.n} "
            f"--steps {args.steps} --write"
        )
        notes = f"Device {device_description(device)}; {args.n} samples, {args.steps} DDIM steps."
        print(f"wrote {write_result(f'generate_speed_{device.type}', table, command, notes)}")


if __name__ == "__main__":
    main()
