"""Which diffusion timesteps tell training scans from new ones? The membership test per timestep on the demo's LDMs.

For each checkpoint, every training and validation scan of the demo (the checkpoint's own preprocessing) is
noised at each timestep with the same seeded noise and denoised once; the table gives the membership AUROC of the
denoising error at each timestep and of their mean over the default timesteps, with the 95 % interval of a
bootstrap over patients. The demo's validation subjects come from other scanners than its training subjects, so
even a model that memorised nothing may score above 0.5 here (CopyMark's warning); the interval over only three
patients a side shows how little that says. Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/privacy_timesteps.py [--checkpoints demo-2d-noaug-e0025 ...] [--write]
"""

from __future__ import annotations

import argparse
import time

import torch

from core.generative.ldm import load_ldm
from core.io.discover import Role
from core.io.load import load_set
from core.io.preprocessing import PreprocessSpec
from core.privacy.membership import DEFAULT_TIMESTEPS, MembershipConfig, denoising_errors, membership_test
from tools.readme_tables import markdown_table, write_result

TIMESTEPS = (25, 50, 100, 200, 300, 500, 700)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--checkpoints", nargs="+", default=["demo-2d-noaug-e0025", "demo-2d-noaug-e0300", "demo-2d-noaug-e2000"]
    )
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/privacy_timesteps.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = MembershipConfig(timesteps=TIMESTEPS, bootstrap=1000)
    header = ["checkpoint", *(f"t={t}" for t in TIMESTEPS), f"mean of {', '.join(map(str, DEFAULT_TIMESTEPS))}", "s"]
    rows = []
    for name in args.checkpoints:
        start = time.perf_counter()
        ldm = load_ldm(f"checkpoints/{name}")
        spec = PreprocessSpec.from_dict(ldm.config.preprocessing)
        manifest = f"data/demo/{ldm.config.spatial_dims}d/manifest.csv"
        train, val = load_set(manifest, spec, role=Role.TRAIN), load_set(manifest, spec, role=Role.VAL)
        sets = {"train": train, "val": val}
        errors = {role: denoising_errors(ldm, images.images, config) for role, images in sets.items()}
        cells = []
        for j in range(len(TIMESTEPS)):
            result, _ = membership_test(
                -errors["train"][:, j], train.patient_ids, -errors["val"][:, j], val.patient_ids, config
            )
            cells.append(f"{result.auroc:.2f}")
        chosen = [TIMESTEPS.index(t) for t in DEFAULT_TIMESTEPS]
        result, _ = membership_test(
            -errors["train"][:, chosen].mean(1),
            train.patient_ids,
            -errors["val"][:, chosen].mean(1),
            val.patient_ids,
            config,
        )
        mean = f"{result.interval()}, p = {result.p_value:.2g}"
        rows.append([name, *cells, mean, f"{time.perf_counter() - start:.0f}"])
        print(" | ".join(rows[-1]), flush=True)
    if args.write:
        command = "PYTHONPATH=. .venv/bin/python benchmarks/privacy_timesteps.py --write --checkpoints " + " ".join(
            args.checkpoints
        )
        notes = (
            f"\n- {len(train)} training scans of {len(set(train.patient_ids))} subjects, {len(val)} validation scans "
            f"of {len(set(val.patient_ids))} subjects; AUROC of the negated denoising error; p: one-sided, from "
            "permuting the subjects' labels (exact).\n"
        )
        print(f"wrote {write_result('privacy_timesteps', markdown_table(header, rows) + notes, command)}")


if __name__ == "__main__":
    main()
