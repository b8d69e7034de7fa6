"""Conditioning values for conditional LDMs: one row per sample, from a CSV or from distributions the user states.

A conditional MONAI LDM (for example the model zoo's ``brain_image_synthesis_latent_diffusion_model``: gender, age,
ventricular and brain volume) takes its values twice: concatenated to the latent as constant channels, and as the
cross-attention context. :func:`conditioning_values` gives sample ``i`` its values from row ``i`` of a CSV, or draws
them from a generator seeded by ``(seed, i)`` alone, so a sample's conditioning, like its noise, does not depend on
the batch it is drawn in. The values are recorded with each sample (``manifest.csv``) and shown beside its pair.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from core.common.errors import MemoScopeError
from core.common.provenance import sha256_files
from core.common.tables import read_csv

RULE = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:(?P<kind>uniform|normal)\(\s*(?P<a>[-+0-9.eE]+)\s*,\s*"
    r"(?P<b>[-+0-9.eE]+)\s*\)|(?P<value>[-+0-9.eE]+))\s*$"
)
SKIPPED_COLUMNS = {"index", "sample", "path"}  # bookkeeping columns a user's CSV may carry


@dataclass(frozen=True)
class Conditioning:
    """The conditioning of a generation run.

    Attributes:
        names: the values, in the order the model takes them.
        values: ``(n, len(names))`` float32, row ``i`` for sample ``i``.
        source: where they came from (the CSV's name and SHA-256, or the rules), for the generation record.
    """

    names: list[str]
    values: npt.NDArray[np.float32]
    source: dict[str, object]


def _draw(rules: list[tuple[str, str, float, float]], seed: int, index: int) -> list[float]:
    rng = np.random.default_rng([seed, index, 0xC0D])  # per sample: batching cannot change it
    out = []
    for _, kind, a, b in rules:
        out.append(a if kind == "fixed" else float(rng.uniform(a, b)) if kind == "uniform" else float(rng.normal(a, b)))
    return out


def parse_rules(texts: Sequence[str]) -> list[tuple[str, str, float, float]]:
    """``NAME=VALUE``, ``NAME=uniform(LOW,HIGH)`` or ``NAME=normal(MEAN,SD)``, each checked, in the given order."""
    rules = []
    for text in texts:
        match = RULE.match(text)
        if not match:
            raise MemoScopeError(
                f"--condition {text!r}: write NAME=VALUE, NAME=uniform(LOW,HIGH) or NAME=normal(MEAN,SD)."
            )
        try:
            if match["value"] is not None:
                rules.append((match["name"], "fixed", float(match["value"]), 0.0))
            else:
                a, b = float(match["a"]), float(match["b"])
                if (match["kind"] == "uniform" and not a < b) or (match["kind"] == "normal" and b <= 0):
                    raise MemoScopeError(f"--condition {text!r}: uniform needs LOW < HIGH and normal a positive SD.")
                rules.append((match["name"], match["kind"], a, b))
        except ValueError as exc:
            raise MemoScopeError(f"--condition {text!r}: {exc}.") from exc
    names = [r[0] for r in rules]
    if len(set(names)) != len(names):
        raise MemoScopeError(f"--condition names one value twice: {names}.")
    return rules


def _from_csv(path: Path, n: int) -> Conditioning:
    if not path.is_file():
        raise MemoScopeError(f"--conditioning {path}: no such file (a CSV with one row per sample).")
    rows = read_csv(path)
    if not rows:
        raise MemoScopeError(f"--conditioning {path}: no rows; it needs one row per sample ({n}).")
    names = [c for c in rows[0] if c and c.strip().lower() not in SKIPPED_COLUMNS]
    if not names:
        raise MemoScopeError(f"--conditioning {path}: no value columns (header: {list(rows[0])}).")
    if len(rows) < n:
        raise MemoScopeError(f"--conditioning {path}: {len(rows)} rows for {n} samples; give one row per sample.")
    values = np.empty((n, len(names)), np.float32)
    for i, row in enumerate(rows[:n]):
        for j, name in enumerate(names):
            try:
                values[i, j] = float(row[name])
            except (TypeError, ValueError):
                raise MemoScopeError(
                    f"--conditioning {path}: row {i + 2}, column {name!r}: {row[name]!r} is not a number."
                ) from None
    if not np.isfinite(values).all():
        raise MemoScopeError(f"--conditioning {path}: holds NaN or infinite values.")
    return Conditioning(names, values, {"csv": path.name, "sha256": sha256_files([path]), "rows_used": n})


def conditioning_values(n: int, seed: int, csv: str = "", rules: Sequence[str] = ()) -> Conditioning | None:
    """The conditioning of ``n`` samples from a CSV (row ``i`` -> sample ``i``) or from rules; ``None`` for
    neither (an unconditional model)."""
    if csv and rules:
        raise MemoScopeError("give --conditioning CSV or --condition NAME=..., not both.")
    if csv:
        return _from_csv(Path(csv), n)
    if not rules:
        return None
    parsed = parse_rules(rules)
    values = np.array([_draw(parsed, seed, i) for i in range(n)], dtype=np.float32).reshape(n, len(parsed))
    return Conditioning([r[0] for r in parsed], values, {"rules": list(rules), "seed": seed})


def describe_model(model: dict[str, int]) -> str:
    """``2 values per sample, concatenated to the latent and given as cross-attention context`` (for a page)."""
    size = max(model.values())
    how = [
        "concatenated to the latent as constant channels" if "concat_channels" in model else "",
        "given as cross-attention context" if "cross_attention_dim" in model else "",
    ]
    return f"{size} values per sample, " + " and ".join(h for h in how if h)


def check_against_model(found: Conditioning | None, model: dict[str, int], checkpoint: str) -> None:
    """Refuse conditioning that the model does not take, or a conditional model without conditioning."""
    if model and found is None:
        sizes = sorted(set(model.values()))
        raise MemoScopeError(
            f"{checkpoint}: a conditional LDM ({model}); give each sample's {sizes[0]} conditioning values with "
            "--conditioning CSV (one row per sample) or --condition NAME=VALUE|uniform(LOW,HIGH)|normal(MEAN,SD) "
            "(one per value, in the model's order)."
        )
    if found is not None and not model:
        raise MemoScopeError(f"{checkpoint}: an unconditional LDM; it takes no conditioning values.")
    if found is not None:
        for what, size in model.items():
            if size != len(found.names):
                raise MemoScopeError(
                    f"{checkpoint}: the model takes {size} conditioning values ({what}), the conditioning gives "
                    f"{len(found.names)} ({', '.join(found.names)})."
                )
