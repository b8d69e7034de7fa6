"""What a detector's training budget buys: the planted-copy benchmark's copy calls against the steps trained.

The scan trains its detector for at most ``max_steps`` optimizer steps (early stopping may end it sooner), so
its cost is bounded whatever the training set's size. This sweep re-runs the planted-copy benchmark
(``benchmarks/planted_copies.py``: real brain MR, training / validation / unseen subjects disjoint, copies
planted among unseen-subject images) with the untrained ``pixels`` encoder (``scan --detector none``) and with
detectors trained for growing budgets, and prints, for the scan's default call (verified, ``heldout-patient``)
and for the paper's call, recall (found = flagged and nearest to its source), unseen-subject images flagged,
and the training time. Usage:

    PYTHONPATH=. .venv/bin/python benchmarks/detector_budget.py [--dims 2 3] [--steps 50 150 400 1000] [--write]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from benchmarks.planted_copies import run_dims
from tools.readme_tables import markdown_table, write_result

KEEP = {("paper", "paper 95"), ("verified", "heldout-patient 95")}  # the paper's call and the scan's default


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", type=int, nargs="+", default=[2], choices=[2, 3])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 150, 400, 1000], help="budgets to train for")
    parser.add_argument("--per-kind", type=int, default=10, help="planted copies per change and level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/detector_budget_<dims>d.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    header = ["dims", "detector", "steps trained", "train s", "call", "recall", "unseen flagged", "F1", "tau"]
    rows, infos = [], []
    for dims in args.dims:
        budgets: list[tuple[str, dict[str, object]]] = [("pixels (none)", {"arch": "pixels"})]
        budgets += [(f"trained, <= {s} steps", {"max_steps": s}) for s in args.steps]
        for label, overrides in budgets:
            start = time.perf_counter()
            headline, _, info = run_dims(dims, 100_000, args.per_kind, args.seed, overrides=overrides)
            infos.append(f"{label}: {info} ({time.perf_counter() - start:.0f} s in all)")
            trained = info.split("detector ")[1].split(" steps")[0].split(", ")[1]
            train_s = info.rsplit(", ", 1)[1].removesuffix(" s")
            for row in headline:
                if (row[1], row[2]) in KEEP and len(row) > 4:
                    n = len(row)
                    # headline columns: ..., unseen flagged, cross-fit FPR, precision, recall, F1, AUROC, tau, score s
                    rows.append(
                        [row[0], label, trained, train_s, row[1], row[n - 5], row[n - 8], row[n - 4], row[n - 2]]
                    )
                    print(" | ".join(rows[-1]), flush=True)
    if args.write:
        command = (
            "PYTHONPATH=. .venv/bin/python benchmarks/detector_budget.py --write --dims "
            f"{' '.join(map(str, args.dims))} --steps {' '.join(map(str, args.steps))} --per-kind {args.per_kind}"
        )
        notes = "\n" + "\n".join(f"- {i}" for i in infos) + f"\n- machine: {platform.machine()}, 2 torch threads\n"
        name = f"detector_budget_{''.join(map(str, args.dims))}d"
        print(f"wrote {write_result(name, markdown_table(header, rows) + notes, command)}")


if __name__ == "__main__":
    main()
