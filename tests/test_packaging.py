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


# lora_core's rooms, top to bottom: a module imports only its own room and rooms in lower layers, never one beside
# it (the API and the pages share the service's core, not each other). ``shared`` is lora_core's top-level modules
# (progress, settings, image files, output folders); ``catalog`` is data about base models (families, the registry)
# that the service reads too; ``service.x`` is a room of the service or one of its top
# modules (config, models, urls, views: its vocabulary; core, app, server: its assembly).
LAYERS: list[set[str]] = [
    {"cli"},
    {"tiny", "tools", "service.app", "service.server"},
    {"service.api", "service.web"},
    {"service.core"},
    {"service.workers"},
    {"service.runtime"},
    {"service.views", "service.metrics"},
    {"service.urls", "service.models"},
    {"service.config"},
    {"service.queue"},
    {"service.auth"},
    {"service.storage"},
    {"training"},
    {"lora"},
    {"base"},
    {"net"},
    {"shared"},
    {"catalog"},
]
TORCH_FREE = ("net", "shared", "catalog")  # what the service may use outside itself: it never loads torch's rooms


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "lora_core":
        return None
    if len(parts) > 1 and parts[1] == "cli":
        return "cli"
    if len(parts) > 2 and parts[1] == "service":
        return f"service.{parts[2]}"
    if len(parts) > 1 and (ROOT / "lora_core" / parts[1]).is_dir():
        return parts[1]
    return "shared"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_every_room_imports_only_rooms_below_it():
    layer = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
    wrong = []
    for path in (ROOT / "lora_core").rglob("*.py"):
        if "migrations" in path.parts:  # Alembic's scripts, loaded by path
            continue
        here = _room(_module(path))
        if path.name == "__init__.py" and not _imported(path):  # a package's docstring
            continue
        assert here in layer, f"{path.relative_to(ROOT)}: room {here!r} is in no layer of LAYERS"
        for name in _imported(path, with_members=True):
            there = _room(name)
            if there is None or there == here or there not in layer:  # `lora_core.service` alone: its module follows
                continue
            too_high = layer[there] <= layer[here]
            outside = here.startswith("service.") and not there.startswith("service.") and there not in TORCH_FREE
            if too_high or outside:
                wrong.append(f"{path.relative_to(ROOT)} ({here}) imports {name} ({there})")
    assert not wrong, "\n".join(sorted(set(wrong)))
