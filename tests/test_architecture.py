"""The engine's layers: imports only go down (or sideways within a layer), core never imports streamlit or tools."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "core"

# Lower number = lower layer. A module may import its own package and anything of a lower layer.
# `detect` and `generative` share a level but are independent: neither may import the other.
LAYERS = {"common": 0, "io": 1, "detect": 2, "generative": 2, "privacy": 3, "study": 4, "cli": 5, "__main__": 6}


def _package(module: str) -> str | None:
    """``core.detect.search`` -> ``detect``; ``core`` itself (its version string) -> ``None``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "core" else None


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "core":  # `from core import x`: x is the package
                names += [f"core.{alias.name}" for alias in node.names if not alias.name.startswith("__")]
    return names


def _modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def _layer_of(path: Path) -> str:
    rel = path.relative_to(CORE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def violations() -> list[str]:
    found = []
    for path in _modules():
        here = _layer_of(path)
        if here == "__init__":
            continue
        for name in _imports(path):
            top = name.split(".")[0]
            if top in ("streamlit", "tools", "views", "app"):
                found.append(f"{path.relative_to(REPO)} imports {name}: core must not depend on the app or tools")
                continue
            target = _package(name)
            if target is None or target == "__init__" or target == here:
                continue
            if target not in LAYERS:
                found.append(f"{path.relative_to(REPO)} imports {name}: unknown layer {target!r}")
            elif LAYERS[target] > LAYERS[here] or (LAYERS[target] == LAYERS[here] and target != here):
                found.append(f"{path.relative_to(REPO)} ({here}) imports {name} ({target}): not a lower layer")
    return found


def test_every_module_sits_in_a_known_layer() -> None:
    assert {_layer_of(p) for p in _modules()} - {"__init__"} <= set(LAYERS)


def test_imports_only_go_down() -> None:
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule itself bites: an io module importing the study layer is reported."""
    fake = tmp_path / "core"
    (fake / "io").mkdir(parents=True)
    (fake / "io" / "bad.py").write_text("from core.study.results import ScanResults\nimport streamlit\n")
    monkeypatch.setattr(sys.modules[__name__], "CORE", fake)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    found = violations()
    assert any("imports core.study.results (study): not a lower layer" in v for v in found)
    assert any("streamlit" in v for v in found)


def test_pages_never_read_study_files() -> None:
    """Pages call core; they do not open, glob, parse or decode files themselves."""
    offenders = []
    for page in [REPO / "app.py", *sorted((REPO / "views").glob("*.py"))]:
        text = page.read_text(encoding="utf-8")
        for needle in (
            r"json\.load",
            r"read_text\(",
            r"\.glob\(",
            r"(?<![.\w])open\(",
            r"\bcsv\.",
            r"np\.load",
            r"\bread_raw\b",
            r"\bdiscover\(",
        ):
            if re.search(needle, text):
                offenders.append(f"{page.name}: {needle}")
    assert offenders == []


# Each file a study, checkpoint, detector, generation or release holds is parsed by the module that owns it, which
# hands everyone else a typed record (StudyInputs, ScanSummary, ReleaseRecord, GenerationRecord, LDMConfig and its
# TrainingRecord, DetectorRecord, SelfTest, Job, the audit). Nobody else parses those files or reads their keys.
RECORD_OWNERS = {
    "core/common/provenance.py": "read_json_record, the one JSON reader the owners below call",
    "core/generative/sample.py": "generation.json (GenerationRecord)",
    "core/generative/ldm.py": "ldm.json, weight checksums, --networks overrides (LDMConfig, TrainingRecord)",
    "core/generative/bundle.py": "a MONAI bundle's configs (read as data, never run)",
    "core/detect/record.py": "detector.json (DetectorRecord)",
    "core/detect/detector.py": "detector.json when loading the weights beside it",
    "core/study/store.py": "study.json (StudyInputs)",
    "core/study/results.py": "summary.json (ScanSummary)",
    "core/study/verdicts.py": "threshold.json (StudyThreshold)",
    "core/study/selftest.py": "selftest.json (SelfTest)",
    "core/study/release.py": "release.json (ReleaseRecord)",
    "core/study/privacy.py": "privacy.json (PrivacyReport)",
    "core/study/jobs.py": "jobs/<id>.json (Job)",
    "tools/demo.py": "the demo's own build record",
    "tools/findings.py": "the demo's build record (how long each part took)",
}
RECORD_KEYS = re.compile(
    r"\b(inputs|provenance|training|generation|generations|ldm|summary_json)\.get\(\s*[\"']"
    r"|\b(provenance|training|generation|ldm)\[\s*[\"']"
)


def test_record_files_are_parsed_only_by_the_module_that_owns_them() -> None:
    """No page, tool or other module parses a record file or reads a record by string keys: a field renamed in
    the owner would otherwise break a reader that nothing type-checks (the pages read ``study.json`` with
    ``.get`` in three places, the Compare page parsed ``ldm.json`` itself)."""
    offenders = []
    trees = ("core", "views", "tools", "benchmarks")
    for path in [REPO / "app.py", *(p for tree in trees for p in sorted((REPO / tree).rglob("*.py")))]:
        name = path.relative_to(REPO).as_posix()
        if name in RECORD_OWNERS:
            continue
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            called = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if called and isinstance(node.func.value, ast.Name) and node.func.value.id == "json":
                if node.func.attr in ("load", "loads"):
                    offenders.append(f"{name}:{node.lineno}: json.{node.func.attr}")
        offenders += [f"{name}: {m.group(0)}" for m in RECORD_KEYS.finditer(text)]
    assert offenders == [], "parse records in their owner (RECORD_OWNERS) and pass typed records: " + str(offenders)


LONG_FUNCTION = 60  # lines


def test_a_long_function_in_core_says_why_it_is_one() -> None:
    """A function of more than 60 lines in core/ states why it is one function (a paragraph starting "One
    function:" in its docstring); otherwise it is split into stages (``run_scan`` and ``build_parser`` were)."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > LONG_FUNCTION and "One function:" not in (ast.get_docstring(node) or ""):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert offenders == []
