"""MONAI bundles as MemoScope checkpoints, read as data: nothing in a bundle is ever executed.

A bundle (MONAI's model-zoo format) describes its networks in ``configs/inference.json`` (or ``.yaml``) as
``{"_target_": "monai.networks.nets.AutoencoderKL", ...keyword arguments}`` and keeps the weights under ``models/``.
MonAI's own ``ConfigParser`` would instantiate those targets and evaluate the ``$`` expressions beside them (Python
code); :func:`read_bundle` instead accepts only the network and scheduler classes MemoScope knows, in MONAI core's
layout or the older monai-generative one (``generative.networks.nets.*``, ``num_channels``), follows ``@`` references,
reads literal values only, and refuses a needed value that is an expression, saying which key to write out. Weights
load through :func:`core.generative.ldm.load_state_dict_file` (safetensors, or ``torch.load(weights_only=True)``),
with the monai-generative key layout converted by explicit rules.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.common.errors import MemoScopeError
from core.common.provenance import now_utc, sha256_files, versions
from core.generative.ldm import (
    DEFAULT_SCHEDULER,
    LDMConfig,
    build_networks,
    convert_and_load,
    load_state_dict_file,
    save_ldm,
)

CONFIG_FILES = ("inference.json", "inference.yaml", "inference.yml")
# the only classes a bundle may name for the parts MemoScope reads, and the part each one is
AUTOENCODERS = {"monai.networks.nets.AutoencoderKL", "generative.networks.nets.AutoencoderKL"}
UNETS = {"monai.networks.nets.DiffusionModelUNet", "generative.networks.nets.DiffusionModelUNet"}
SCHEDULERS = {
    f"{package}.networks.schedulers.{name}"
    for package in ("monai", "generative")
    for name in ("DDIMScheduler", "DDPMScheduler")
}
RENAMED = {"num_channels": "channels"}  # monai-generative keyword -> MONAI core keyword
RUNTIME_ONLY = {"use_checkpointing", "use_checkpoint", "use_flash_attention"}  # memory/speed switches, not weights
SCHEDULE_KEYS = {"num_train_timesteps", "schedule", "beta_start", "beta_end", "clip_sample", "prediction_type"}
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass
class BundleSpec:
    """What a bundle's config says, as MemoScope reads it.

    Attributes:
        folder: the bundle.
        config_file: the config it was read from.
        layout: ``monai`` or ``monai-generative`` (the package its network targets name).
        config: the LDM config (networks, schedule, scale factor, image size).
        autoencoder_weights, unet_weights: the weight files.
        conditioning: for a conditional UNet, how it is conditioned (channels concatenated to the latent,
            cross-attention size); empty for an unconditional one.
        notes: every value taken by a rule rather than read from the config.
    """

    folder: Path
    config_file: Path
    layout: str
    config: LDMConfig
    autoencoder_weights: Path
    unet_weights: Path
    conditioning: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _load_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    if not folder.is_dir():
        raise MemoScopeError(f"--bundle {folder}: no such folder (a MONAI bundle holds configs/ and models/).")
    for name in CONFIG_FILES:
        path = folder / "configs" / name
        if path.is_file():
            break
    else:
        raise MemoScopeError(f"{folder}: no configs/inference.json (or .yaml); is this a MONAI bundle folder?")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            try:
                data = yaml.safe_load(text)  # plain data only: a Python tag is refused, never run
            except yaml.YAMLError as exc:
                raise MemoScopeError(
                    f"{path}: not a plain YAML bundle config ({str(exc).splitlines()[0]}); Python tags such as "
                    "!!python/object are never run. Fix the file or use the bundle's inference.json."
                ) from exc
    except (OSError, ValueError, RecursionError) as exc:
        raise MemoScopeError(f"{path}: unreadable bundle config ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(data, dict):
        raise MemoScopeError(f"{path}: expected a JSON/YAML object at the top level.")
    return path, data


class _Resolver:
    """Follows ``@name`` (and ``@a::b``) references through a bundle config; refuses ``$`` expressions."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data, self.path = data, path

    def lookup(self, ref: str, where: str, seen: tuple[str, ...] = ()) -> Any:
        if ref in seen:
            raise MemoScopeError(f"{self.path}: the references at {where} form a loop ({' -> '.join(seen)}).")
        node: Any = self.data
        for part in ref.split("::"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise MemoScopeError(f"{self.path}: {where} refers to @{ref}, which the config does not define.")
        return self.value(node, ref.replace("::", "."), (*seen, ref))

    def value(self, node: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, str) and node.startswith("@"):
            return self.lookup(node[1:], where, seen)
        if isinstance(node, str) and node.startswith("$"):
            raise MemoScopeError(
                f"{self.path}: {where} is a Python expression ({node[:60]!r}); MemoScope never runs code from a "
                "bundle. Write its value out in the config (a number, list or string) and import again."
            )
        if isinstance(node, dict):
            return {k: self.value(v, f"{where}.{k}", seen) for k, v in node.items() if not str(k).startswith("_")}
        if isinstance(node, list):
            return [self.value(v, f"{where}[{i}]", seen) for i, v in enumerate(node)]
        return node


def _definitions(data: dict[str, Any], path: Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Top-level component definitions by kind, each ``(key, raw definition)``; references to them are skipped."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {"autoencoder": [], "unet": [], "scheduler": []}
    for key, node in data.items():
        if not isinstance(node, dict) or "_target_" not in node:
            continue
        target = str(node["_target_"])
        kind = (
            "autoencoder"
            if target in AUTOENCODERS
            else "unet"
            if target in UNETS
            else "scheduler"
            if target in SCHEDULERS
            else None
        )
        if kind is None:
            short = target.rsplit(".", 1)[-1]
            if any(word in short for word in ("Autoencoder", "VQVAE", "UNet", "Diffusion", "Scheduler")):
                raise MemoScopeError(
                    f"{path}: {key} names {target}, which MemoScope does not load (it reads AutoencoderKL, "
                    "DiffusionModelUNet and the DDPM/DDIM schedulers of MONAI or monai-generative); nothing was run."
                )
            continue  # samplers, savers, transforms: never imported, never needed to rebuild the networks
        found[kind].append((key, node))
    return found


def _one(found: list[tuple[str, dict[str, Any]]], what: str, path: Path, prefer: tuple[str, ...]) -> tuple[str, dict]:
    if not found:
        raise MemoScopeError(f"{path}: no {what} definition (a `_target_` of MONAI's {what} class) in the config.")
    if len(found) > 1:
        preferred = [item for item in found if item[0] in prefer]
        if len(preferred) != 1:
            keys = ", ".join(k for k, _ in found)
            raise MemoScopeError(f"{path}: several {what} definitions ({keys}); keep one in the inference config.")
        return preferred[0]
    return found[0]


def _network_kwargs(raw: dict[str, Any], resolver: _Resolver, key: str, notes: list[str]) -> dict[str, Any]:
    kwargs = resolver.value(raw, key)
    for old, new in RENAMED.items():
        if old in kwargs:
            kwargs[new] = kwargs.pop(old)
            notes.append(f"{key}: monai-generative `{old}` read as `{new}`")
    for name in sorted(RUNTIME_ONLY & set(kwargs)):
        kwargs.pop(name)
        notes.append(f"{key}: `{name}` left out (a memory/speed switch that does not change the weights' outputs)")
    return kwargs


def _literal_shape(expression: Any) -> list[int] | None:
    """The shape literal of a ``$torch.randn((1, C, ...))`` noise expression, read with ``ast.literal_eval`` (a
    literal is parsed, never evaluated as code); ``None`` when there is no plain literal."""
    if not isinstance(expression, str):
        return None
    match = re.fullmatch(r"\$\s*torch\.randn\(\s*(\(.*?\)|\[.*?\])\s*\)(?:\.to\(.*\))?", expression.strip())
    if not match:
        return None
    try:
        shape = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None
    return [int(v) for v in shape] if all(isinstance(v, int) for v in shape) else None


def _latent_shape(data: dict[str, Any], resolver: _Resolver, notes: list[str]) -> list[int] | None:
    if "latent_shape" in data:
        shape = resolver.value(data["latent_shape"], "latent_shape")
        if isinstance(shape, list) and all(isinstance(v, int) for v in shape):
            return shape
    for key in ("noise", "input_noise"):
        shape = _literal_shape(data.get(key))
        if shape is not None:
            notes.append(f"latent shape {shape[1:]} read from the literal in `{key}` (batch dimension dropped)")
            return shape[1:]
    return None


def _weights(folder: Path, kind: str, given: str | None) -> Path:
    if given:
        path = Path(given)
        path = path if path.is_absolute() else folder / path
        if not path.is_file():
            raise MemoScopeError(f"--{kind} {given}: no such file.")
        return path
    models = folder / "models"
    files = sorted(p for p in models.glob("*") if p.suffix in WEIGHT_SUFFIXES) if models.is_dir() else []
    autoencoders = [p for p in files if "autoencoder" in p.stem.lower()]
    others = [p for p in files if p not in autoencoders]
    chosen = autoencoders if kind == "autoencoder" else [p for p in others if p.stem == "model"] or others
    if len(chosen) != 1:
        listed = ", ".join(p.name for p in files) or "none"
        raise MemoScopeError(
            f"{folder}: cannot tell which file in models/ holds the {kind} weights (found: {listed}); name it with "
            f"--{kind} FILE."
        )
    return chosen[0]


def read_bundle(
    folder: str | Path,
    image_size: list[int] | None = None,
    autoencoder: str | None = None,
    unet: str | None = None,
) -> BundleSpec:
    """Read a bundle's networks, schedule and weight files without building or running anything.

    Args:
        folder: the bundle folder (``configs/``, ``models/``).
        image_size: the image size, when the config states no latent shape (a list, one value per axis).
        autoencoder, unet: weight files (relative to the bundle) when ``models/`` does not make them clear.

    One function: one bundle's files are read in order and each step refuses, by name, what it cannot read; split
    up, the half-read bundle would be passed between the steps.
    """
    folder = Path(folder)
    path, data = _load_config(folder)
    resolver = _Resolver(data, path)
    found = _definitions(data, path)
    notes: list[str] = []
    ae_key, ae_raw = _one(found["autoencoder"], "AutoencoderKL", path, ("autoencoder_def",))
    unet_key, unet_raw = _one(found["unet"], "DiffusionModelUNet", path, ("network_def", "diffusion_def", "unet_def"))
    targets = {str(ae_raw["_target_"]), str(unet_raw["_target_"])}
    layout = "monai-generative" if any(t.startswith("generative.") for t in targets) else "monai"
    ae = _network_kwargs(ae_raw, resolver, ae_key, notes)
    net = _network_kwargs(unet_raw, resolver, unet_key, notes)
    dims = int(ae.get("spatial_dims", net.get("spatial_dims", 0)))
    if dims not in (2, 3):
        raise MemoScopeError(f"{path}: {ae_key}.spatial_dims must be 2 or 3 (found {ae.get('spatial_dims')!r}).")

    schedule = dict(DEFAULT_SCHEDULER)
    if found["scheduler"]:
        s_key, s_raw = _one(found["scheduler"], "scheduler", path, ("noise_scheduler", "scheduler"))
        given = resolver.value(s_raw, s_key)
        unknown = sorted(set(given) - SCHEDULE_KEYS - {"set_alpha_to_one", "steps_offset"})
        if unknown:
            raise MemoScopeError(f"{path}: {s_key} has settings MemoScope does not apply: {unknown}.")
        schedule.update({k: v for k, v in given.items() if k in SCHEDULE_KEYS})
        if given.get("set_alpha_to_one", True) is not True or given.get("steps_offset", 0) != 0:
            notes.append(f"{s_key}: set_alpha_to_one/steps_offset differ from MONAI's defaults; MemoScope uses them")
    else:
        notes.append(f"no scheduler in the config: MemoScope's default schedule {DEFAULT_SCHEDULER}")

    scale = data.get("scale_factor")
    if isinstance(scale, int | float) and not isinstance(scale, bool):
        scale_factor = float(scale)
    else:
        scale_factor = 1.0
        notes.append(
            "no numeric scale_factor in the config: latents are decoded unscaled (1.0), as MONAI's samplers do"
        )

    latent = _latent_shape(data, resolver, notes)
    factor = 2 ** (len(ae.get("channels", ())) - 1)
    if image_size is not None:
        size = [int(v) for v in image_size]
        if len(size) == 1:
            size = size * dims
    elif latent is not None:
        size = [int(v) * factor for v in latent[1:]]
    else:
        raise MemoScopeError(
            f"{path}: the config states no latent shape (no `latent_shape`, no literal noise shape); give the image "
            f"size with --image-size (one value per axis, {dims} in all)."
        )
    latent_channels = int(ae.get("latent_channels", 3))
    if latent is not None and latent[0] != latent_channels:
        raise MemoScopeError(
            f"{path}: the latent shape has {latent[0]} channels but {ae_key}.latent_channels is {latent_channels}."
        )
    if int(net.get("out_channels", latent_channels)) != latent_channels:
        raise MemoScopeError(
            f"{path}: {unet_key}.out_channels ({net.get('out_channels')}) differs from the autoencoder's "
            f"latent_channels ({latent_channels}); these networks do not form one LDM."
        )
    config = LDMConfig(
        spatial_dims=dims,
        image_size=size,
        autoencoder={**ae, "spatial_dims": dims},
        unet={**net, "spatial_dims": dims},
        scheduler=schedule,
        scale_factor=scale_factor,
    )
    config.validate()
    return BundleSpec(
        folder=folder,
        config_file=path,
        layout=layout,
        config=config,
        autoencoder_weights=_weights(folder, "autoencoder", autoencoder),
        unet_weights=_weights(folder, "unet", unet),
        conditioning=config.conditioning,
        notes=notes,
    )


def import_bundle(
    folder: str | Path,
    out: str | Path,
    image_size: list[int] | None = None,
    autoencoder: str | None = None,
    unet: str | None = None,
    overwrite: bool = False,
) -> tuple[str, BundleSpec, dict[str, Any]]:
    """Read a bundle (:func:`read_bundle`), load its weights into MONAI's networks and save a MemoScope checkpoint.

    Returns:
        (checkpoint hash, what was read, the import record kept in the checkpoint's provenance).
    """
    spec = read_bundle(folder, image_size, autoencoder, unet)
    ae_net, unet_net = build_networks(spec.config, str(spec.config_file))
    record: dict[str, Any] = {
        "imported_at": now_utc(),
        "versions": versions(),
        "bundle": spec.folder.name,
        "bundle_config": spec.config_file.relative_to(spec.folder).as_posix(),
        "bundle_config_sha256": sha256_files([spec.config_file]),
        "layout": spec.layout,
        "conditioning": spec.conditioning,
        "notes": spec.notes,
    }
    for module, path, name in (
        (ae_net, spec.autoencoder_weights, "autoencoder"),
        (unet_net, spec.unet_weights, "unet"),
    ):
        report = convert_and_load(module, load_state_dict_file(path), str(path))
        record[name] = {
            "source": path.relative_to(spec.folder).as_posix() if path.is_relative_to(spec.folder) else path.name,
            "sha256": sha256_files([path]),
            **asdict(report),
        }
    spec.config.provenance = {**spec.config.provenance, "import": record}
    return save_ldm(out, spec.config, ae_net, unet_net, overwrite=overwrite), spec, record
