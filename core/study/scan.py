"""The whole memorization scan: load, (train) detector, embed, search, calibrate, write outputs."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.common.provenance import atomic_path, atomic_write_json, atomic_write_text, now_utc, versions
from core.detect.detector import Detector, DetectorConfig, embed_set, load_detector, save_detector, train_detector
from core.detect.metrics import calibrate, empirical_p_values, memorization_metrics, parse_rule, pixel_correlation, ssim
from core.detect.search import NeighborTables, SearchConfig, search_all
from core.io.data import ImageSet, SliceAxis, check_patient_overlap, load_set
from core.io.preprocessing import PreprocessSpec
from core.study.store import open_study

Log = Callable[[str], None]


@dataclass
class ScanConfig:
    """Settings of one scan (all saved in ``summary.json``)."""

    spec: PreprocessSpec
    slices: SliceAxis | None = None
    threshold_rule: str = "paper"
    percentile: float = 95.0
    k: int = 5
    seed: int = 0
    skip_bad: bool = False
    detector: str | None = None
    detector_overrides: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _checkpoint_of(synthetic_source: str) -> dict[str, Any]:
    """The generation records (``core generate``) found in the synthetic folder, and their checkpoints."""
    source = Path(synthetic_source)
    records = sorted(source.rglob("generation.json")) if source.is_dir() else []
    generations = [json.loads(path.read_text()) for path in records]
    hashes = sorted({g.get("checkpoint_hash") for g in generations if g.get("checkpoint_hash")})
    return {
        "checkpoint": generations[0].get("checkpoint") if len(hashes) == 1 else None,
        "checkpoint_hash": hashes[0] if len(hashes) == 1 else (hashes or None),
        "generations": generations,
    }


def pair_rows(
    tables: NeighborTables, train: ImageSet, synthetic: ImageSet, tau: float, null: np.ndarray
) -> list[list[Any]]:
    """One row per synthetic sample and neighbour rank, with the pixel-space cross-check."""
    rows: list[list[Any]] = []
    sims, idx = tables.synthetic_to_train.similarity, tables.synthetic_to_train.index
    p_values = empirical_p_values(sims.ravel(), null).reshape(sims.shape)
    two_d = train.spec.spatial_dims == 2
    for s, syn_id in enumerate(synthetic.ids):
        for rank in range(sims.shape[1]):
            t = int(idx[s, rank])
            a, b = synthetic.images[s, 0], train.images[t, 0]
            row = [syn_id, rank + 1, train.ids[t], train.patient_ids[t], f"{sims[s, rank]:.6f}",
                   f"{p_values[s, rank]:.6g}", int(sims[s, rank] > tau), f"{pixel_correlation(a, b):.6f}"]
            if two_d:
                row.append(f"{ssim(a, b):.6f}")
            rows.append(row)
    return rows


def run_scan(
    train_source: str | Path,
    val_source: str | Path,
    synthetic_source: str | Path,
    out: str | Path,
    config: ScanConfig,
    log: Log = print,
) -> dict[str, Any]:
    """Run the scan and write ``pairs.csv``, ``train_nn.csv``, ``summary.json``,
    ``neighbors.npz`` and ``embeddings/`` into the study folder ``out``.

    Steps: 1. load the three sets with one preprocessing spec; 2. load or train the detector;
    3. embed (cached); 4. exact search in four directions; 5. calibrate tau and compute the
    metrics; 6. write every output atomically and record the run in the study database.
    """
    rule, fixed = parse_rule(config.threshold_rule)
    study = open_study(out)
    out = study.path
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    run_config = {"train": str(train_source), "val": str(val_source), "synthetic": str(synthetic_source),
                  **{k: v for k, v in asdict(config).items() if k != "spec"}, "preprocessing": config.spec.to_dict()}
    with study.run("scan", run_config) as result:
        # 1. data
        detector: Detector | None = load_detector(config.detector) if config.detector else None
        spec = config.spec
        if detector is not None and detector.config.preprocessing:
            detector_spec = PreprocessSpec.from_dict(detector.config.preprocessing)
            if detector_spec != spec:
                log(f"using the detector's preprocessing {detector_spec.to_dict()}")
            spec = detector_spec
        sets = {
            role: load_set(src, spec, role=role, slices=config.slices, skip_bad=config.skip_bad)  # type: ignore[arg-type]
            for role, src in (("train", train_source), ("val", val_source), ("synthetic", synthetic_source))
        }
        train, val, synthetic = sets["train"], sets["val"], sets["synthetic"]
        check_patient_overlap(train, val)
        log(f"loaded {len(train)} training, {len(val)} validation, {len(synthetic)} synthetic samples")
        timings["load_s"] = time.perf_counter() - clock

        # 2. detector
        if detector is None:
            detector_config = DetectorConfig.for_dims(
                spec.spatial_dims, list(spec.spatial_size), seed=config.seed, preprocessing=spec.to_dict(), **config.detector_overrides
            )
            log(f"training a detector ({detector_config.arch}, {detector_config.augmentation} augmentation, {detector_config.epochs} epochs)")
            detector = train_detector(train, val, detector_config, progress=lambda r: log(f"  epoch {r['epoch']}/{r['epochs']}: train {r['train_loss']:.4f} val {r['val_loss']:.4f}"))
            save_detector(detector, out / "detector", overwrite=True)
        timings["detector_s"] = time.perf_counter() - clock - sum(timings.values())

        # 3. embeddings
        embeddings, cached = {}, {}
        for role, images in sets.items():
            embeddings[role], cached[role] = embed_set(detector, images, config.cache_dir)
            with atomic_path(out / "embeddings" / f"{role}.npz") as tmp, open(tmp, "wb") as handle:
                np.savez(handle, ids=np.array(images.ids), vectors=embeddings[role].vectors)
        timings["embed_s"] = time.perf_counter() - clock - sum(timings.values())

        # 4. search
        tables = search_all(embeddings["train"].vectors, embeddings["val"].vectors, embeddings["synthetic"].vectors, SearchConfig(k=config.k))
        timings["search_s"] = time.perf_counter() - clock - sum(timings.values())

        # 5. threshold and metrics
        threshold = calibrate(rule, tables.train_to_val.best, tables.val_to_train.best, config.percentile, fixed)
        metrics = memorization_metrics(
            threshold, tables.train_to_synthetic.best, tables.synthetic_to_train.best,
            tables.train_to_val.best, tables.val_to_train.best, seed=config.seed,
        )
        null = tables.val_to_train.best
        tau = threshold.value

        # 6. outputs
        header = ["synthetic_id", "rank", "train_id", "patient_id", "similarity", "p_value", "is_copy", "pixel_corr"]
        if spec.spatial_dims == 2:
            header.append("ssim")
        atomic_write_text(out / "pairs.csv", _csv_text(header, pair_rows(tables, train, synthetic, tau, null)))
        t2s = tables.train_to_synthetic
        train_rows = [
            [tid, train.patient_ids[i], synthetic.ids[int(t2s.index[i, 0])], f"{t2s.best[i]:.6f}",
             int(t2s.best[i] > tau), f"{tables.train_to_val.best[i]:.6f}"]
            for i, tid in enumerate(train.ids)
        ]
        atomic_write_text(out / "train_nn.csv", _csv_text(
            ["train_id", "patient_id", "nearest_synthetic_id", "similarity", "memorized", "nearest_val_similarity"], train_rows))
        with atomic_path(out / "neighbors.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **{  # type: ignore[arg-type]
                "synthetic_to_train_sim": tables.synthetic_to_train.similarity, "synthetic_to_train_idx": tables.synthetic_to_train.index,
                "train_to_synthetic_sim": t2s.similarity, "train_to_synthetic_idx": t2s.index,
                "train_to_val_sim": tables.train_to_val.similarity, "val_to_train_sim": tables.val_to_train.similarity,
            })
        timings["total_s"] = time.perf_counter() - clock
        summary = {
            **metrics.to_dict(),
            "rule": rule,
            "percentile": threshold.percentile,
            "threshold": tau,
            "counts": {"train": len(train), "val": len(val), "synthetic": len(synthetic),
                       "memorized": metrics.memorized.count, "copies": metrics.copies.count},
            "inputs": {role: {"source": s.source, "n": len(s), "n_patients": len(set(s.patient_ids)), "content_hash": s.content_hash,
                              "skipped": [asdict(f) for f in s.skipped], "embeddings_cached": cached[role]} for role, s in sets.items()},
            "preprocessing": spec.to_dict(),
            "slices": config.slices,
            "k": config.k,
            "seed": config.seed,
            "detector": {"path": str(config.detector or out / "detector"), "hash": detector.detector_hash,
                         "config": asdict(detector.config), "best_epoch": detector.best_epoch},
            **_checkpoint_of(str(synthetic_source)),
            "versions": versions(),
            "timings": timings,
            "finished_at": now_utc(),
            "notes": [
                "Intervals resample samples with the threshold held fixed; they omit calibration uncertainty.",
                "expected_false_positive_rate.copy is the share of real held-out images above the threshold.",
            ],
        }
        atomic_write_json(out / "summary.json", summary)
        study.set_inputs({"train": str(train_source), "val": str(val_source), "synthetic": str(synthetic_source),
                          "detector": summary["detector"]["path"], "checkpoint": summary["checkpoint"]})
        result.update(summary)
    log(
        f"threshold {tau:.4f} ({rule}); memorized {metrics.memorized.count}/{metrics.memorized.total} "
        f"({metrics.memorized.value:.1%}); copies {metrics.copies.count}/{metrics.copies.total} ({metrics.copies.value:.1%})"
    )
    return summary

