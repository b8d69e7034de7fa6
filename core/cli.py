"""Command line: each subcommand parses its options and calls one core function."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

from core.common.errors import MemoScopeError


def _spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D images or 3D volumes (default 2)")
    parser.add_argument("--slices", choices=("axial", "coronal", "sagittal"), help="take 2D slices of 3D files (with --dims 2)")
    parser.add_argument("--size", type=int, help="spatial size per axis (default 64 in 2D, 32 in 3D)")
    parser.add_argument("--resize", choices=("resize", "crop_pad"), default="resize", help="interpolate, or centre crop/pad")
    parser.add_argument("--intensity", choices=("minmax", "ct", "percentile"), default="minmax",
                        help="min-max to [-1, 1] (paper), CT HU window, or percentile clip")
    parser.add_argument("--ct-window", type=float, nargs=2, default=(-1000.0, 1000.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--percentiles", type=float, nargs=2, default=(1.0, 99.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable files and list them in the output")


def _spec(args: argparse.Namespace):  # noqa: ANN202 - returns PreprocessSpec
    from core.io.preprocessing import PreprocessSpec

    if args.slices and args.dims != 2:
        raise MemoScopeError("--slices takes 2D slices; use it with --dims 2.")
    return PreprocessSpec.for_dims(args.dims, args.size, resize=args.resize, intensity=args.intensity,
                                   ct_window=tuple(args.ct_window), percentiles=tuple(args.percentiles))


def _detector_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector-epochs", type=int, help="detector training epochs (default 100)")
    parser.add_argument("--augmentation", choices=("paper", "strong"), help="detector augmentation policy (default strong)")
    parser.add_argument("--arch", choices=("resnet18", "resnet50", "convres"), help="detector encoder")
    parser.add_argument("--batch-size", type=int, help="detector batch size")


def _detector_overrides(args: argparse.Namespace) -> dict[str, object]:
    pairs = {"epochs": args.detector_epochs, "augmentation": args.augmentation, "arch": args.arch, "batch_size": args.batch_size}
    return {k: v for k, v in pairs.items() if v is not None}


def cmd_scan(args: argparse.Namespace) -> None:
    from core.study.scan import ScanConfig, run_scan

    config = ScanConfig(
        spec=_spec(args), slices=args.slices, threshold_rule=args.threshold_rule, percentile=args.percentile,
        k=args.k, seed=args.seed, skip_bad=args.skip_bad, detector=args.detector,
        detector_overrides=_detector_overrides(args), cache_dir=args.cache_dir,
    )
    run_scan(args.train, args.val, args.synthetic, args.out, config)
    print(f"wrote {args.out}/summary.json, pairs.csv, train_nn.csv")


def cmd_generate(args: argparse.Namespace) -> None:
    from core.generative.sample import generate

    result = generate(args.checkpoint, args.out, args.n, args.steps, args.scheduler, args.batch_size, args.seed,
                      args.device, args.precision, args.format)
    print(f"wrote {result.n_written} samples to {result.out} ({result.n_skipped} already there) in {result.seconds:.1f} s")


def cmd_train_ldm(args: argparse.Namespace) -> None:
    from core.generative.ldm import networks_config
    from core.generative.train import TrainLDMConfig, train_ldm
    from core.io.data import load_set

    spec = _spec(args)
    networks = networks_config(args.networks, spec.spatial_dims, spec.spatial_size) if args.networks else None
    images = load_set(args.data, spec, role="train", slices=args.slices, skip_bad=args.skip_bad)
    cfg = TrainLDMConfig(ae_epochs=args.ae_epochs, epochs=args.epochs, batch_size=args.batch_size, ae_lr=args.ae_lr, lr=args.lr,
                         adversarial=args.adversarial, augment=args.augment, save_every=args.save_every,
                         save_at=tuple(args.save_at), seed=args.seed, notes=tuple(args.note))
    last = train_ldm(images, args.out, cfg, networks)
    print(f"checkpoint: {last}")


def cmd_train_detector(args: argparse.Namespace) -> None:
    from core.detect.detector import train_from_sources

    detector, digest = train_from_sources(
        args.train, args.val, _spec(args), args.out, args.slices, args.skip_bad, args.seed, _detector_overrides(args), args.overwrite,
        progress=lambda r: print(f"epoch {r['epoch']}/{r['epochs']}: train {r['train_loss']:.4f} val {r['val_loss']:.4f}"))
    print(f"detector {args.out} (best epoch {detector.best_epoch + 1}, sha256 {digest[:12]})")


def cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from core.common.provenance import atomic_path
    from core.detect.detector import embed_set, load_detector
    from core.io.data import load_set
    from core.io.preprocessing import PreprocessSpec

    detector = load_detector(args.detector)
    spec = PreprocessSpec.from_dict(detector.config.preprocessing) if detector.config.preprocessing else _spec(args)
    images = load_set(args.input, spec, slices=args.slices, skip_bad=args.skip_bad)
    embeddings, cached = embed_set(detector, images, args.cache_dir)
    with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.array(embeddings.ids), vectors=embeddings.vectors)
    print(f"{len(embeddings.ids)} embeddings of size {embeddings.vectors.shape[1]} -> {args.out}{' (cached)' if cached else ''}")


def cmd_import(args: argparse.Namespace) -> None:
    from core.generative.ldm import import_checkpoint

    digest, record = import_checkpoint(args.autoencoder, args.unet, args.config, args.out, overwrite=args.overwrite)
    for part in ("autoencoder", "unet"):
        info = record[part]
        how = "converted from the monai-generative layout" if info["converted"] else "MONAI layout"
        print(f"{part}: {how}; {info['renamed']} renamed, {len(info['filled'])} identity projections, {len(info['ignored'])} unused tensors dropped")
    print(f"checkpoint {args.out} (sha256 {digest[:12]})")


def cmd_split(args: argparse.Namespace) -> None:
    from core.common.provenance import atomic_write_text
    from core.io.data import discover, split_by_patient

    records = discover(args.input)
    train_idx, val_idx = split_by_patient([r.patient_id for r in records], args.val_fraction, args.seed)
    roles = {int(i): "train" for i in train_idx} | {int(i): "val" for i in val_idx}
    out = Path(args.out).resolve()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "patient_id", "split"])
    for i, record in enumerate(records):
        rel = Path(os.path.relpath(Path(record.path).resolve(), out.parent)).as_posix()
        writer.writerow([rel, record.patient_id, roles[i]])
    atomic_write_text(out, buffer.getvalue())
    print(f"{len(train_idx)} training and {len(val_idx)} validation samples, split by patient -> {out}")


def cmd_info(args: argparse.Namespace) -> None:
    from core.generative.ldm import checkpoint_hash, read_config

    config = read_config(args.checkpoint)
    print(json.dumps({"checkpoint_hash": checkpoint_hash(args.checkpoint), "latent_shape": config.latent_shape, **config.to_dict()}, indent=2))


def cmd_report(args: argparse.Namespace) -> None:
    from core.study.report import write_report

    out = args.out or str(Path(args.study) / f"report.{args.format}")
    print(f"wrote {write_report(args.study, out, args.format, args.top)}")


def cmd_release(args: argparse.Namespace) -> None:
    from core.study.report import release

    result = release(args.study, args.out, args.threshold, args.exclude_confirmed)
    print(f"released {result.kept} samples to {result.out}; removed {result.removed_by_threshold} above the threshold"
          f" and {result.removed_as_confirmed} more confirmed as copies by reviewers")


def cmd_run_job(args: argparse.Namespace) -> None:
    from core.study.jobs import run_job

    job = run_job(args.job)
    if job.status != "done":
        raise MemoScopeError(f"job {job.id} failed: {job.error}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="MemoScope: find patient-data copies among synthetic images.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="the whole job: detector, embeddings, search, calibrated metrics")
    p.add_argument("--train", required=True, help="training images: folder or CSV manifest")
    p.add_argument("--val", required=True, help="held-out real images (other patients)")
    p.add_argument("--synthetic", required=True, help="generated images: folder or CSV manifest")
    p.add_argument("--out", required=True, help="study folder for the outputs")
    p.add_argument("--detector", help="a trained detector folder (default: train one on --train)")
    p.add_argument("--threshold-rule", default="paper", help="paper | heldout | fixed:X (default paper)")
    p.add_argument("--percentile", type=float, default=95.0, help="percentile for paper/heldout (default 95)")
    p.add_argument("--k", type=int, default=5, help="neighbours kept per synthetic sample (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="embedding cache (default ~/.cache/memoscope or $MEMOSCOPE_CACHE_DIR)")
    _spec_args(p)
    _detector_args(p)
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("generate", help="sample images from an LDM checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scheduler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] | mps")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help="mixed precision on GPU")
    p.add_argument("--format", choices=("png16", "npy"), default="png16", help="2D output format (3D is NIfTI)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train-ldm", help="train an autoencoder + diffusion UNet (resumes from --out)")
    p.add_argument("--data", required=True, help="training images: folder or manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--ae-epochs", type=int, default=50)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ae-lr", type=float, default=5e-4)
    p.add_argument("--lr", type=float, default=2.5e-4)
    p.add_argument("--adversarial", action="store_true", help="add a patch adversarial loss to the autoencoder")
    p.add_argument("--augment", action="store_true", help="rotate/flip training batches")
    p.add_argument("--save-every", type=int, default=0, help="also save a checkpoint every N UNet epochs")
    p.add_argument("--save-at", type=int, nargs="+", default=[], metavar="EPOCH", help="also save a checkpoint after these UNet epochs")
    p.add_argument("--networks", help='JSON file overriding network keywords: {"autoencoder": {...}, "unet": {...}}')
    p.add_argument("--note", action="append", default=[], help="text kept in the checkpoint's provenance (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    _spec_args(p)
    p.set_defaults(func=cmd_train_ldm)

    p = sub.add_parser("train-detector", help="train the contrastive copy detector")
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    _spec_args(p)
    _detector_args(p)
    p.set_defaults(func=cmd_train_detector)

    p = sub.add_parser("embed", help="embed a folder or manifest with a detector (cached)")
    p.add_argument("--detector", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help=".npz with ids and vectors")
    p.add_argument("--cache-dir")
    _spec_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("import-checkpoint", help="import plain state dicts (.pt/.pth/.safetensors) with a kwargs JSON")
    p.add_argument("--autoencoder", required=True)
    p.add_argument("--unet", required=True)
    p.add_argument("--config", required=True, help="JSON: spatial_dims, image_size, autoencoder, unet[, scheduler, scale_factor]")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("split", help="write a manifest with a patient-level train/val split")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("report", help="the ethics-board report of a scanned study (self-contained HTML or PDF)")
    p.add_argument("--study", required=True)
    p.add_argument("--format", choices=("html", "pdf"), default="html")
    p.add_argument("--out", help="file to write (default STUDY/report.FORMAT)")
    p.add_argument("--top", type=int, default=8, help="copy pairs shown as images (default 8)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("release", help="write the synthetic samples that are not copies, with manifest, record and report")
    p.add_argument("--study", required=True)
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--threshold", type=float, help="override the scan's threshold")
    p.add_argument("--exclude-confirmed", action="store_true", help="also drop samples a reviewer marked as copies")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("run-job", help="run a background job recorded by the app (jobs/<id>.json in a study)")
    p.add_argument("job", help="the job's JSON file")
    p.set_defaults(func=cmd_run_job)

    p = sub.add_parser("info", help="show a checkpoint's config and hash")
    p.add_argument("--checkpoint", required=True)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MemoScopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where supported", file=sys.stderr)
        return 130
    return 0
