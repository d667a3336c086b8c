"""What `pip install .` and `pip install .[service]` promise matches the exact pins the images are built from."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()  # pip's inline comments: "networkx==3.6.1  # via torch"
        if line and not line.startswith(("#", "-r")):
            req = Requirement(line)
            out[req.name.lower().replace("_", "-")] = str(req.specifier)
    return out


def _declared(items: list[str]) -> dict[str, str]:
    reqs = [Requirement(r) for r in items]
    return {req.name.lower().replace("_", "-"): str(req.specifier) for req in reqs}


def _imported(path: Path, with_members: bool = False) -> list[str]:
    """Every absolute module a file imports, lazy imports included; ``with_members`` adds ``module.name`` for each
    ``from module import name`` (which may itself be a module)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if with_members else [])
    return out


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_wheels_dependencies_are_the_images_pins():
    core, service = _pins(ROOT / "requirements.txt"), _pins(ROOT / "requirements-service.txt")
    for name, spec in _declared(PROJECT["dependencies"]).items():
        assert core.get(name) == spec, f"{name}: pyproject {spec}, requirements.txt {core.get(name)}"
    for name, spec in _declared(PROJECT["optional-dependencies"]["service"]).items():
        assert service.get(name, core.get(name)) == spec, f"{name}: pyproject[service] {spec}"


def test_every_package_the_service_imports_is_declared():
    """Top-level imports of lora_core/service (lazy ones included) name distributions in [project] or [service]."""
    declared = set(_declared(PROJECT["dependencies"])) | set(_declared(PROJECT["optional-dependencies"]["service"]))
    # what those bring with them by their own metadata (starlette with fastapi, jinja2 with torch...)
    from importlib.metadata import requires

    frontier, closure = list(declared), set(declared)
    while frontier:
        for r in requires(frontier.pop()) or []:
            req = Requirement(r)
            name = req.name.lower().replace("_", "-")
            if req.marker is None and name not in closure:
                closure.add(name)
                frontier.append(name)
    dists = packages_distributions()
    missing = set()
    for path in (ROOT / "lora_core" / "service").rglob("*.py"):
        for name in _imported(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "lora_core":
                continue
            if not {d.lower().replace("_", "-") for d in dists.get(top, [top])} & closure:
                missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, sorted(missing)


def test_nothing_run_at_prediction_time_imports_the_build_time_rooms():
    """``lora_core.tiny`` (the embedded base's build and measures) and ``lora_core.tools`` (schema generation) are
    for building and testing: the predictors and the service must start without them. Only the CLI, which
    dispatches to them lazily, and the rooms themselves may import them."""
    build_time = ("lora_core.tiny", "lora_core.tools")
    runtime = [ROOT / "predict_train.py", ROOT / "predict_generate.py"] + [
        p for p in (ROOT / "lora_core").rglob("*.py") if p.parent.name not in ("tiny", "tools") and p.name != "cli.py"
    ]
    offending = {
        str(path.relative_to(ROOT))
        for path in runtime
        for n in _imported(path, with_members=True)
        if any(n == room or n.startswith(room + ".") for room in build_time)
    }
    assert not offending, sorted(offending)
