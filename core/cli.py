"""Command line: each subcommand parses its options and calls one core function."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from core.common.config import choices
from core.common.devices import Precision
from core.common.errors import MemoScopeError
from core.common.progress import StageBars
from core.detect.metrics import RULE_CHOICES, rule_help
from core.detect.record import Arch
from core.detect.verify import MatchMethod
from core.generative.ldm import SchedulerName
from core.generative.sample import ImageFormat
from core.io.augment import AugmentPolicy
from core.io.discover import Role
from core.io.load import SliceAxis
from core.io.patients import HELP as PATIENTS_HELP
from core.io.preprocessing import IntensityRule, ResizeMode
from core.study.formats import ReportFormat


def _spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D images or 3D volumes (default 2)")
    parser.add_argument("--slices", choices=choices(SliceAxis), help="take 2D slices of 3D files (with --dims 2)")
    parser.add_argument("--size", type=int, help="spatial size per axis (default 64 in 2D, 32 in 3D)")
    parser.add_argument("--resize", choices=choices(ResizeMode), help="interpolate (default), or centre crop/pad")
    parser.add_argument(
        "--intensity",
        choices=choices(IntensityRule),
        help="min-max to [-1, 1] (paper), CT HU window, or percentile clip",
    )
    parser.add_argument(
        "--ct-window", type=float, nargs=2, metavar=("LOW", "HIGH"), help="HU window (default -1000 1000)"
    )
    parser.add_argument(
        "--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"), help="clip percentiles (default 1 99)"
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable files and list them in the output")


def _detector_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detector-epochs", type=int, help="detector training epochs at most (default 100; see --detector-steps)"
    )
    parser.add_argument(
        "--detector-steps",
        type=int,
        help="detector training budget in optimizer steps (default 1000): training stops at the epochs or the "
        "steps, whichever come first, or earlier when the validation loss stops improving",
    )
    parser.add_argument(
        "--augmentation", choices=choices(AugmentPolicy), help="detector augmentation policy (default strong)"
    )
    parser.add_argument(
        "--arch", choices=choices(Arch), help="detector encoder (default resnet18 in 2D, convres in 3D)"
    )
    parser.add_argument("--batch-size", type=int, help="detector batch size")


def _options(args: argparse.Namespace, *skip: str) -> dict[str, Any]:
    """The parsed flags as flat options (what a page's form submits too), without argparse's own keys."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command", *skip) and v is not None}


def _detector_overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "epochs": args.detector_epochs,
        "max_steps": args.detector_steps,
        "augmentation": args.augmentation,
        "arch": args.arch,
        "batch_size": args.batch_size,
    }
    return {k: v for k, v in pairs.items() if v is not None}


NO_DETECTOR = "none"
DETECTOR_FLAGS = ("detector_epochs", "detector_steps", "augmentation", "arch", "batch_size")
VERIFY_FLAGS = ("candidates", "pixel_candidates", "max_angle", "max_shift", "max_scale", "max_size")


def _verify_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        choices=choices(MatchMethod),
        help="verified (default): embedding retrieval, then aligned structure correlation decides; paper: the "
        "embedding correlation decides, as in Dar et al.",
    )
    parser.add_argument("--candidates", type=int, help="embedding candidates verified per sample (default 5)")
    parser.add_argument("--pixel-candidates", type=int, help="extra candidates from blurred pixels (default 5; 0 off)")
    parser.add_argument("--max-angle", type=float, help="rotation searched, degrees either way (default 8)")
    parser.add_argument("--max-shift", type=float, help="translation searched, fraction of each side (default 0.1)")
    parser.add_argument(
        "--max-scale", type=float, help="zoom searched, fraction either way (default 0.1: 0.9-1.1 in 0.05 steps; 0 off)"
    )
    parser.add_argument(
        "--verify-size",
        dest="max_size",
        type=int,
        help="the verified call, pixel checks and Review compare scans at their own resolution up to this many "
        "pixels/voxels per side (default 256 in 2D, 64 in 3D; never below --size)",
    )


DEVICE_HELP = "auto (default: CUDA, then MPS, then CPU) | cpu | cuda[:i] | mps"
PRECISION_HELP = "forward passes in fp32 (default) or mixed bf16/fp16 (fp16 on a GPU only)"
TRAIN_LDM_FLAGS = (
    "ae_epochs",
    "epochs",
    "batch_size",
    "ae_lr",
    "lr",
    "adversarial",
    "augment",
    "save_every",
    "save_at",
    "seed",
    "device",
)


def cmd_scan(args: argparse.Namespace) -> None:
    from core.io.patients import doubt_message
    from core.io.preprocessing import config_from_options
    from core.study.scan import ScanConfig, check_inputs, run_scan

    overrides = _detector_overrides(args)
    if args.detector == NO_DETECTOR:  # no training: blurred pixels retrieve, and verification decides
        if overrides.get("arch", Arch.PIXELS) != Arch.PIXELS:
            raise MemoScopeError(f"--detector none and --arch {overrides['arch']} disagree; give one of them.")
        args.detector, overrides = None, {**overrides, "arch": Arch.PIXELS}
    options = _options(args, *DETECTOR_FLAGS, *VERIFY_FLAGS)
    verify = {k: getattr(args, k) for k in VERIFY_FLAGS if getattr(args, k) is not None}
    config = config_from_options(ScanConfig, {**options, "detector_overrides": overrides, "verify": verify})
    if args.detector:  # a given detector is used as trained: what would train one changes nothing
        ignored = [f"--{k.replace('_', '-')}" for k in DETECTOR_FLAGS if getattr(args, k, None) is not None]
        ignored += ["--size"] if args.size is not None else []
        if ignored:
            print(
                f"warning: {', '.join(ignored)} ignored: --detector {args.detector} is used as trained, with its own "
                "architecture, weights and (when it records one) image size.",
                file=sys.stderr,
            )
    for role, grouping in check_inputs(config).items():
        print(f"{role} patients: {grouping.describe()}", file=sys.stderr)
        if grouping.doubtful:
            print(f"warning: {doubt_message(role, getattr(config, role), grouping)}", file=sys.stderr)
    bars = StageBars()
    summary = run_scan(config, progress=bars)
    bars.close()
    for role, found in summary.inputs.items():
        if found.skipped:
            print(
                f"warning: skipped {len(found.skipped)} unreadable {role} file(s), e.g. {found.skipped[0].path}; "
                "all are listed in summary.json",
                file=sys.stderr,
            )
    from core.study.caveats import caveats
    from core.study.results import ScanResults
    from core.study.review import by_patient, metrics_at, nearer_than_heldout

    mem, cop = summary.memorized, summary.copies
    print(f"threshold {summary.tau:.3f} ({summary.threshold.rule})")
    for name, f in (("copies", cop), ("memorized training scans", mem)):
        print(f"{name} {f.count}/{f.total} ({f.value:.1%}; 95 % CI {f.low:.1%} to {f.high:.1%}, {f.method})")
    scan = ScanResults.open(args.out)
    print(by_patient(scan, summary.tau).describe())
    pairs = scan.pairs()
    metrics = metrics_at(scan, summary.tau, str(summary.threshold.rule), summary.threshold.percentile)
    for caveat in caveats(summary, metrics, pairs, nearer_than_heldout(scan, pairs), summary.diagnostics):
        print(f"caveat: {caveat.text}", file=sys.stderr)
    print(f"wrote {args.out}/summary.json, pairs.csv, train_nn.csv (scan {summary.scan_id})")
    from core.study.privacy import current_privacy

    if privacy := current_privacy(args.out, summary.scan_id):
        print("beyond copies (the privacy tests, privacy.json):")
        for sentence in privacy.sentences():
            print(f"- {sentence}")


def cmd_generate(args: argparse.Namespace) -> None:
    from core.generative.sample import GenerateConfig, generate

    bars = StageBars()
    result = generate(GenerateConfig.from_dict(_options(args)), progress=bars)
    bars.close()
    print(
        f"wrote {result.n_written} samples to {result.out} ({result.n_skipped} already there) in {result.seconds:.1f} s"
    )


def cmd_train_ldm(args: argparse.Namespace) -> None:
    from core.common.devices import resolve_device
    from core.generative.ldm import networks_config
    from core.generative.train import TrainLDMConfig, train_ldm
    from core.io.load import load_set
    from core.io.preprocessing import PreprocessSpec

    resolve_device(args.device or "auto")  # a missing GPU is reported before the data loads
    spec = PreprocessSpec.from_options(vars(args))
    networks = networks_config(args.networks, spec.spatial_dims, spec.spatial_size) if args.networks else None
    images = load_set(args.data, spec, role=Role.TRAIN, slices=args.slices, skip_bad=args.skip_bad)
    cfg = TrainLDMConfig.from_dict({**_options(args, *(set(vars(args)) - set(TRAIN_LDM_FLAGS))), "notes": args.note})
    bars = StageBars()
    last = train_ldm(images, args.out, cfg, networks, progress=bars)
    bars.close()
    print(f"checkpoint: {last}")


def cmd_train_detector(args: argparse.Namespace) -> None:
    from core.detect.detector import TrainDetectorConfig, train_from_sources
    from core.io.preprocessing import config_from_options

    options = {**_options(args, *DETECTOR_FLAGS), "overrides": _detector_overrides(args)}
    bars = StageBars()
    detector = train_from_sources(config_from_options(TrainDetectorConfig, options), progress=bars)
    bars.close()
    best = detector.history[detector.best_epoch] if detector.history else {}
    print(f"detector {args.out} (kept step {best.get('step', '?')}, sha256 {detector.detector_hash[:12]})")


def cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from core.common.devices import check_precision, resolve_device
    from core.common.provenance import atomic_path
    from core.detect.detector import embed_set, load_detector
    from core.io.load import load_set
    from core.io.preprocessing import PreprocessSpec

    if Path(args.out).is_dir():
        raise MemoScopeError(f"--out {args.out}: is a folder; give the .npz file to write the embeddings to.")
    device = resolve_device(args.device)  # a missing GPU is reported before anything loads
    precision = check_precision(device, args.precision or "fp32")
    detector = load_detector(args.detector)
    spec = detector.config.preprocessing or PreprocessSpec.from_options(vars(args))
    images = load_set(args.input, spec, slices=args.slices, skip_bad=args.skip_bad)
    embeddings, cached = embed_set(detector, images, args.cache_dir, device=device, precision=precision)
    with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, ids=np.array(embeddings.ids), vectors=embeddings.vectors)
    print(
        f"{len(embeddings.ids)} embeddings of size {embeddings.vectors.shape[1]} -> "
        f"{args.out}{' (cached)' if cached else ''}"
    )


def cmd_import(args: argparse.Namespace) -> None:
    from core.generative.bundle import import_bundle
    from core.generative.ldm import import_checkpoint

    if args.bundle:
        if args.config:
            raise MemoScopeError("--config: a bundle describes its own networks; give --bundle or --config, not both.")
        digest, spec, record = import_bundle(
            args.bundle, args.out, args.image_size, args.autoencoder, args.unet, overwrite=args.overwrite
        )
        print(f"bundle {spec.folder.name}: {spec.layout} layout, read from {record['bundle_config']}")
        print(
            f"image size {spec.config.image_size}, latent {list(spec.config.latent_shape)}, schedule "
            f"{spec.config.scheduler['schedule']} {spec.config.scheduler['beta_start']}-"
            f"{spec.config.scheduler['beta_end']} over {spec.config.scheduler['num_train_timesteps']} steps, "
            f"scale factor {spec.config.scale_factor}"
        )
        for note in spec.notes:
            print(f"note: {note}")
        if spec.conditioning:
            print(
                f"conditional LDM ({spec.conditioning}): generate with --conditioning CSV or --condition NAME=..., "
                "one value per conditioning input in the model's order"
            )
    else:
        missing = [
            flag
            for flag, value in (("--autoencoder", args.autoencoder), ("--unet", args.unet), ("--config", args.config))
            if not value
        ]
        if missing:
            raise MemoScopeError(f"import-checkpoint needs --bundle FOLDER, or {', '.join(missing)} with the others.")
        digest, record = import_checkpoint(args.autoencoder, args.unet, args.config, args.out, overwrite=args.overwrite)
    for part in ("autoencoder", "unet"):
        info = record[part]
        how = "converted from the monai-generative layout" if info["converted"] else "MONAI layout"
        print(
            f"{part} ({info['source']}): {how}; {info['renamed']} renamed, {len(info['filled'])} identity "
            f"projections, {len(info['ignored'])} unused tensors dropped"
        )
    print(f"checkpoint {args.out} (sha256 {digest[:12]})")


def cmd_split(args: argparse.Namespace) -> None:
    from core.common.tables import write_csv
    from core.io.discover import discover_patients
    from core.io.patients import doubt_message
    from core.io.splits import split_by_patient

    records, grouping = discover_patients(args.input, patients=args.patients)
    print(f"patients: {grouping.describe()}")
    if grouping.doubtful:  # a split of one-file patients would put one person's scans on both sides
        raise MemoScopeError(doubt_message("the input", args.input, grouping) + " A split needs to know; refused.")
    train_idx, val_idx = split_by_patient([r.patient_id for r in records], args.val_fraction, args.seed or 0)
    roles = {int(i): "train" for i in train_idx} | {int(i): "val" for i in val_idx}
    out = Path(args.out).resolve()
    if out.is_dir():
        raise MemoScopeError(
            f"--out {args.out}: is a folder; give the manifest file to write (e.g. {args.out}/split.csv)."
        )
    if not out.parent.is_dir():
        raise MemoScopeError(f"--out {args.out}: the folder {out.parent} does not exist; create it first.")
    rows = [
        [Path(os.path.relpath(Path(r.path).resolve(), out.parent)).as_posix(), r.patient_id, roles[i]]
        for i, r in enumerate(records)
    ]
    write_csv(out, ["path", "patient_id", "split"], rows)
    print(f"{len(train_idx)} training and {len(val_idx)} validation samples, split by patient -> {out}")


def cmd_verify_audit(args: argparse.Namespace) -> None:
    from core.study.verdicts import verify_audit

    check = verify_audit(args.study)
    if not check.ok:
        raise MemoScopeError(f"{args.study}: the audit trail failed verification: " + "; ".join(check.problems))
    print(
        f"{args.study}: audit trail intact ({check.rows} rows, head {check.head[:16] or 'empty'}"
        + (f", {check.legacy_rows} rows from before the hash chain" if check.legacy_rows else "")
        + ")"
    )


def cmd_upgrade_study(args: argparse.Namespace) -> None:
    from core.study.results import SCHEMA_VERSION, upgrade_study
    from core.study.verdicts import anchor_audit

    changed = upgrade_study(args.study)
    anchor_audit(args.study)
    state = "upgraded to" if changed else "already at"
    print(f"{args.study}: {state} schema {SCHEMA_VERSION}, its summary recorded in study.sqlite (edits now show)")


def _work_in(study: str) -> str:
    """The folder a writing command works in: the study, or for a committed demo study its per-user copy (so
    the pseudonym key, the report and the self-test never land in the repository); says which."""
    from core.study.store import working_copy

    folder = working_copy(study)
    if folder != Path(study):
        print(f"{study} is a committed demo study: working on its per-user copy {folder}", file=sys.stderr)
    return str(folder)


def cmd_selftest(args: argparse.Namespace) -> None:
    from core.study.selftest import SelfTestConfig, run_selftest

    args.study = _work_in(args.study)
    options = {
        "study": args.study,
        "per_kind": args.per_kind,
        "levels": args.levels,
        "seed": args.seed,
        "device": args.device,
        "precision": args.precision,
    }
    bars = StageBars()
    result = run_selftest(SelfTestConfig.from_dict({k: v for k, v in options.items() if v is not None}), bars)
    bars.close()
    print(
        f"self-test of scan {result.scan_id} ({result.method}, {result.rule}, tau {result.tau:.3f}): unseen-patient "
        f"scans called copies {result.unseen_fpr.count}/{result.unseen_fpr.total}; precision {result.precision:.2f}; "
        f"F1 {result.f1:.2f}; AUROC {result.auroc:.3f}"
    )
    table = result.recall_table()
    print("  " + "".join(f"{k:>11}" for k in table[0]))
    for row in table:
        print("  " + "".join(f"{v:>11}" for v in row.values()))
    print(f"wrote {Path(args.study) / 'selftest.json'}")


def cmd_info(args: argparse.Namespace) -> None:
    from core.generative.ldm import checkpoint_hash, read_config

    config = read_config(args.checkpoint)
    print(
        json.dumps(
            {
                "checkpoint_hash": checkpoint_hash(args.checkpoint),
                "latent_shape": config.latent_shape,
                **config.to_dict(),
            },
            indent=2,
        )
    )


def cmd_report(args: argparse.Namespace) -> None:
    from core.study.report import write_report

    args.study = _work_in(args.study)
    out = args.out or str(Path(args.study) / f"report.{args.format}")
    print(f"wrote {write_report(args.study, out, args.format, args.top)}")


def cmd_privacy(args: argparse.Namespace) -> None:
    from core.common.devices import resolve_device
    from core.study.privacy import PrivacyConfig, run_privacy

    study = _work_in(args.study)
    options = {"study": study, "seed": args.seed, "device": args.device}
    config = PrivacyConfig.from_dict(options | ({"timesteps": tuple(args.timesteps)} if args.timesteps else {}))
    device = str(resolve_device(config.device))  # a missing GPU before any work
    bars = StageBars()
    report = run_privacy(study, config.membership(), device, progress=bars)
    bars.close()
    for sentence in report.sentences():
        print(f"- {sentence}")
    print(f"wrote {Path(study) / 'privacy.json'}")


def cmd_release(args: argparse.Namespace) -> None:
    from core.study.release import release

    result = release(_work_in(args.study), args.out, args.threshold, args.exclude_confirmed)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"released {result.kept} samples to {result.out}; removed {result.removed_by_threshold} above the threshold"
        f" and {result.removed_as_confirmed} more confirmed as copies by reviewers"
    )


def cmd_run_job(args: argparse.Namespace) -> None:
    from core.study.jobs import run_job

    job = run_job(args.job)
    if job.status != "done":
        raise MemoScopeError(f"job {job.id} failed: {job.error}")


def _scan_parser(sub: Any) -> None:
    p = sub.add_parser("scan", help="the whole job: detector, embeddings, search, calibrated metrics")
    p.add_argument("--ray", help="embed and verify on Ray workers: local, auto or ray://host:port (default: here)")
    p.add_argument("--workers", type=int, help="Ray workers (default 0: one per GPU in the cluster)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--precision", choices=choices(Precision), help=PRECISION_HELP)
    p.add_argument("--train", required=True, help="training images: folder or CSV manifest")
    p.add_argument("--val", required=True, help="held-out real images (other patients)")
    p.add_argument("--synthetic", required=True, help="generated images: folder or CSV manifest")
    p.add_argument("--patients", help=PATIENTS_HELP + " (default auto)")
    p.add_argument("--out", required=True, help="study folder for the outputs")
    p.add_argument(
        "--detector",
        help="a trained detector folder (default: train one on --train), or 'none': train nothing, retrieve by "
        "blurred pixels (the same as --arch pixels; with the verified call, alignment still decides)",
    )
    p.add_argument(
        "--threshold-rule",
        help=f"{RULE_CHOICES} (default: the method's own: paper for paper, heldout-patient for verified). "
        + rule_help().replace("%", "%%"),  # argparse formats help with %
    )
    p.add_argument("--percentile", type=float, help="percentile for the percentile rules (default 95)")
    p.add_argument("--k", type=int, help="neighbours kept per synthetic sample (default 5)")
    p.add_argument(
        "--train-budget",
        type=float,
        metavar="MINUTES",
        help="when training the detector here would take longer (projected from its first evaluation), train none "
        "and retrieve by blurred pixels instead, as --detector none, and say so in the summary and the report "
        "(default 20; 0: no limit)",
    )
    p.add_argument(
        "--no-privacy",
        dest="privacy",
        action="store_false",
        default=None,
        help="do not run the privacy tests after the scan (they run when the samples name their checkpoint: "
        "membership through the checkpoint, C_T, authenticity, nearest record; `privacy` runs them later)",
    )
    p.add_argument(
        "--approximate-above",
        type=int,
        help="training sets larger than this are searched with an IVF index widened until its recall@1 on a sample of "
        "the queries is at least 0.99, else exactly; what was used is recorded (default 1e7)",
    )
    p.add_argument(
        "--patient-top",
        type=int,
        help="patient resemblance averages the best N matches among one patient's scans (default 3)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--cache-dir", help="embedding cache (default ~/.cache/memoscope or $MEMOSCOPE_CACHE_DIR)")
    _spec_args(p)
    _detector_args(p)
    _verify_args(p)
    p.set_defaults(func=cmd_scan)


def _selftest_parser(sub: Any) -> None:
    p = sub.add_parser("selftest", help="plant changed copies of the study's training scans and measure the call")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--precision", choices=choices(Precision), help=PRECISION_HELP)
    p.add_argument("--study", required=True, help="a scanned study folder")
    p.add_argument("--per-kind", type=int, help="copies per change and level (default 10)")
    p.add_argument("--levels", type=int, nargs="+", help="strength levels, of 1 2 3 (default 1 2)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_selftest)


def _generate_parser(sub: Any) -> None:
    p = sub.add_parser("generate", help="sample images from an LDM checkpoint")
    p.add_argument("--ray", help="fan batches out over Ray: local, auto or ray://host:port (default: run here)")
    p.add_argument("--workers", type=int, help="Ray workers (default 0: one per GPU in the cluster)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument(
        "--conditioning", help="conditional LDMs: CSV, one row per sample, a column per value in the model's order"
    )
    p.add_argument(
        "--condition",
        nargs="+",
        metavar="NAME=RULE",
        help="conditional LDMs: NAME=VALUE, NAME=uniform(LOW,HIGH) or NAME=normal(MEAN,SD), one per value in the "
        "model's order (drawn per sample from the seed)",
    )
    p.add_argument("--steps", type=int)
    p.add_argument("--scheduler", choices=choices(SchedulerName), help="default ddim")
    p.add_argument("--batch-size", type=int, help="samples per pass (default 0: fit to the device)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--precision", choices=choices(Precision), help="mixed precision on GPU (default fp32)")
    p.add_argument("--format", choices=choices(ImageFormat), help="2D output format (default png16; 3D is NIfTI)")
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="compile the denoiser with torch.compile (CUDA graphs on a GPU): slow first batch, faster long runs",
    )
    p.set_defaults(func=cmd_generate)


def _train_ldm_parser(sub: Any) -> None:
    p = sub.add_parser("train-ldm", help="train an autoencoder + diffusion UNet (resumes from --out)")
    p.add_argument("--data", required=True, help="training images: folder or manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--ae-epochs", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--ae-lr", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--adversarial", action="store_true", help="add a patch adversarial loss to the autoencoder")
    p.add_argument("--augment", action="store_true", help="rotate/flip training batches")
    p.add_argument("--save-every", type=int, help="also save a checkpoint every N UNet epochs")
    p.add_argument(
        "--save-at",
        type=int,
        nargs="+",
        default=[],
        metavar="EPOCH",
        help="also save a checkpoint after these UNet epochs",
    )
    p.add_argument(
        "--networks",
        help='JSON file overriding network and scheduler keywords: {"autoencoder": {...}, "unet": {...}, '
        '"scheduler": {"prediction_type": "v_prediction"}}',
    )
    p.add_argument("--note", action="append", default=[], help="text kept in the checkpoint's provenance (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help=DEVICE_HELP)
    _spec_args(p)
    p.set_defaults(func=cmd_train_ldm)


def _train_detector_parser(sub: Any) -> None:
    p = sub.add_parser("train-detector", help="train the contrastive copy detector")
    p.add_argument(
        "--ray",
        help="train on Ray Train workers (DDP, the same optimisation as one process): local, auto or ray://host:port "
        "(default: here)",
    )
    p.add_argument("--workers", type=int, help="Ray workers (default 0: one per GPU in the cluster, or 2 on CPUs)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--precision", choices=choices(Precision), help=PRECISION_HELP)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--patients", help=PATIENTS_HELP + " (default auto; the leak check uses it)")
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true")
    _spec_args(p)
    _detector_args(p)
    p.set_defaults(func=cmd_train_detector)


def _embed_parser(sub: Any) -> None:
    p = sub.add_parser("embed", help="embed a folder or manifest with a detector (cached)")
    p.add_argument("--detector", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help=".npz with ids and vectors")
    p.add_argument("--cache-dir")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=choices(Precision), help=PRECISION_HELP)
    _spec_args(p)
    p.set_defaults(func=cmd_embed)


def _import_checkpoint_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import-checkpoint",
        help="import a MONAI bundle, or plain state dicts (.pt/.pth/.safetensors) with a kwargs JSON",
        description="Either --bundle FOLDER (a MONAI model-zoo bundle: its configs/inference.json is read as data, "
        "never run), or --autoencoder, --unet and --config. Weights load with safetensors or "
        "torch.load(weights_only=True); the monai-generative key layout is converted.",
    )
    p.add_argument("--bundle", help="a MONAI bundle folder (configs/inference.json, models/)")
    p.add_argument("--autoencoder", help="autoencoder weights (with --bundle: only when models/ is ambiguous)")
    p.add_argument("--unet", help="diffusion UNet weights (with --bundle: only when models/ is ambiguous)")
    p.add_argument("--config", help="JSON: spatial_dims, image_size, autoencoder, unet[, scheduler, scale_factor]")
    p.add_argument("--image-size", type=int, nargs="+", help="with --bundle, when its config states no latent shape")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_import)


def _split_parser(sub: Any) -> None:
    p = sub.add_parser("split", help="write a manifest with a patient-level train/val split")
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--patients", default="auto", help=PATIENTS_HELP + " (default auto)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_split)


def _report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="the ethics-board report of a scanned study (self-contained HTML or PDF)")
    p.add_argument("--study", required=True)
    p.add_argument("--format", choices=choices(ReportFormat), default=ReportFormat.HTML.value)
    p.add_argument("--out", help="file to write (default STUDY/report.FORMAT)")
    p.add_argument("--top", type=int, default=8, help="copy pairs shown as images (default 8)")
    p.set_defaults(func=cmd_report)


def _privacy_parser(sub: Any) -> None:
    p = sub.add_parser(
        "privacy",
        help="beyond copies: can the weights tell who was in training (membership), and do the samples stay closer "
        "to training than new scans (C_T, authenticity, nearest record)",
    )
    p.add_argument("--study", required=True, help="a scanned study (its checkpoint, when recorded, is tested too)")
    p.add_argument(
        "--timesteps", type=int, nargs="+", help="diffusion timesteps of the membership test (default 25 50 100 200)"
    )
    p.add_argument("--seed", type=int, default=0, help="the membership test's noise and the tests' resampling")
    p.add_argument("--device", default="auto", help="where the checkpoint runs: auto, cpu, cuda[:i] or mps")
    p.set_defaults(func=cmd_privacy)


def _release_parser(sub: Any) -> None:
    p = sub.add_parser(
        "release", help="write the synthetic samples that are not copies, with manifest, record and report"
    )
    p.add_argument("--study", required=True)
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--threshold", type=float, help="override the scan's threshold")
    p.add_argument("--exclude-confirmed", action="store_true", help="also drop samples a reviewer marked as copies")
    p.set_defaults(func=cmd_release)


def _upgrade_study_parser(sub: Any) -> None:
    p = sub.add_parser(
        "upgrade-study",
        help="rewrite an older study's summary.json in the current schema (numbers unchanged) and record its hash",
    )
    p.add_argument("--study", required=True)
    p.set_defaults(func=cmd_upgrade_study)


def _verify_audit_parser(sub: Any) -> None:
    p = sub.add_parser("verify-audit", help="re-walk a study's verdict audit chain; exit 2 if any row was altered")
    p.add_argument("--study", required=True)
    p.set_defaults(func=cmd_verify_audit)


def _run_job_parser(sub: Any) -> None:
    p = sub.add_parser("run-job", help="run a background job recorded by the app (jobs/<id>.json in a study)")
    p.add_argument("job", help="the job's JSON file")
    p.set_defaults(func=cmd_run_job)


def _info_parser(sub: Any) -> None:
    p = sub.add_parser("info", help="show a checkpoint's config and hash")
    p.add_argument("--checkpoint", required=True)
    p.set_defaults(func=cmd_info)


# one builder per command, in --help order
COMMANDS = (
    _scan_parser,
    _selftest_parser,
    _generate_parser,
    _train_ldm_parser,
    _train_detector_parser,
    _embed_parser,
    _import_checkpoint_parser,
    _split_parser,
    _report_parser,
    _privacy_parser,
    _release_parser,
    _upgrade_study_parser,
    _verify_audit_parser,
    _run_job_parser,
    _info_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per builder in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="python -m core", description="MemoScope: find patient-data copies among synthetic images."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
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
    except OSError as exc:  # a full disk, a read-only folder, a quota: the system's words and the file they hit
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror}; free space or choose a writable folder, then rerun.", file=sys.stderr)
        return 2
    except sqlite3.OperationalError as exc:
        if "full" not in str(exc) and "readonly" not in str(exc):
            raise
        print(f"error: the study database cannot be written ({exc}); free space, then rerun.", file=sys.stderr)
        return 2
    return 0
