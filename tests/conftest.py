import contextlib
import functools
import http.server
import inspect
import io
import os
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from lora_core.base import checkpoints


@pytest.fixture(scope="session")
def tiny_pipe():
    """The committed tiny base, loaded once for the whole session."""
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def train_predictor():
    """predict_train.py's predictor, set up once: its warm base (and the prior images it keeps) are shared."""
    from predict_train import Predictor

    predictor = Predictor()
    predictor.setup()
    return predictor


@pytest.fixture(scope="session")
def preset_lora(train_predictor, tmp_path_factory):
    """``preset_lora(name, images, seed, task="object", checkpoints=1, base_model=None)``: a preset's full training
    through predict_train.py, once per session for each ``name`` (the slowest fixture: the training and the generation
    tests share it, so each ``name`` is always asked with the same arguments). One checkpoint unless asked:
    ``lora`` is then the last step's, which the quality suites were measured on.
    Returns the output files, copied out of the predictor's folders (it keeps only its latest few)."""
    import shutil
    from types import SimpleNamespace

    made: dict = {}
    asked: dict = {}

    def train(name: str, images, seed: int, task: str = "object", checkpoints: int = 1, base_model=None):
        settings = (seed, task, checkpoints, base_model)
        assert asked.setdefault(name, settings) == settings, f"{name!r} was trained with {asked[name]}, not {settings}"
        if name not in made:
            folder = tmp_path_factory.mktemp(f"preset-{name}")
            out = call_predictor(
                train_predictor,
                instance_data=zip_images(folder / "in.zip", images),
                task=task,
                seed=seed,
                checkpoints=checkpoints,
                base_model=base_model,
            )

            def kept(path) -> Path:
                return Path(shutil.copy(path, folder / Path(path).name))

            made[name] = SimpleNamespace(
                **{
                    key: kept(getattr(out, key)) for key in ("lora", "lora_a1111", "embedding", "scales_grid", "report")
                },
                checkpoints=[kept(p) for p in out.checkpoints],
            )
        return made[name]

    return train


def purple_stars(n: int = 10):
    """A held-out concept (never in the tiny base's world): what the training tests learn."""
    from lora_core.tiny import tiny_world

    return tiny_world.concept_images("star", "purple", n, first_seed=200)


def draw(pipe, prompt: str, seeds) -> list:
    """One tiny-base image per seed, in batched passes: for tests that compare sets of images drawn the same way
    (about a third of the time of a pass per image; ``sampling.sample`` itself draws each output alone)."""
    from lora_core.base import checkpoints, sampling

    seeds, defaults = list(seeds), checkpoints.get_checkpoint("tiny").defaults
    assert seeds == list(range(seeds[0], seeds[0] + len(seeds))), "consecutive seeds"
    return [
        image
        for first in range(0, len(seeds), sampling.MAX_OUTPUTS)
        for image in sampling.sample(
            pipe,
            sampling.resolve_request(
                defaults, prompt=prompt, seed=seeds[first], num_outputs=min(sampling.MAX_OUTPUTS, len(seeds) - first)
            ),
            one_pass=True,
        )
    ]


def pipe_weights(pipe) -> dict[str, torch.Tensor]:
    """A copy of every parameter of the parts LoRAs patch (``component.name``), to compare bit for bit later."""
    from lora_core.catalog import families

    components = families.of_pipeline(pipe).lora_components
    return {f"{c}.{n}": p.detach().clone() for c in components for n, p in getattr(pipe, c).named_parameters()}


def call_predictor(predictor, **given):
    """Call ``run`` the way Cog does: every input present, defaults taken from their ``Input``."""
    params = inspect.signature(predictor.run).parameters
    inputs = {name: getattr(param.default, "default", param.default) for name, param in params.items()}
    return predictor.run(**{**inputs, **given})


class Files(http.server.SimpleHTTPRequestHandler):
    """A folder over HTTP, quiet, counting the GETs of each path (in ``gets``: tests check what was downloaded)."""

    gets: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        Files.gets[self.path] = Files.gets.get(self.path, 0) + 1
        super().do_GET()


@contextlib.contextmanager
def serve_folder(root):
    """``http://127.0.0.1:<port>`` serving ``root`` (``Files``) until the block ends."""
    handler = functools.partial(Files, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()


def local_generator(cache_dir):
    """predict_generate.py's predictor, set up to fetch LoRAs and base checkpoints from this machine's test servers
    (127.0.0.1) into ``cache_dir`` (checkpoints into its ``checkpoints`` folder); the environment is left as it was."""
    from predict_generate import Predictor

    return _local(Predictor, cache_dir)


def local_trainer(cache_dir):
    """predict_train.py's predictor, set up as ``local_generator``'s (base checkpoints by URL from 127.0.0.1)."""
    from predict_train import Predictor

    return _local(Predictor, cache_dir)


def _local(predictor_class, cache_dir):
    env = {
        "LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": "127.0.0.1",
        "LORA_STUDIO_CACHE_DIR": str(cache_dir),
        "LORA_STUDIO_CHECKPOINT_CACHE_DIR": str(Path(cache_dir) / "checkpoints"),
    }
    os.environ.update(env)
    try:
        p = predictor_class()
        p.setup()
    finally:
        for name in env:
            del os.environ[name]
    return p


def zip_images(path, images, fmt="PNG", stem="img", **save_options):
    """A zip upload of PIL images, as a user makes one."""
    ext = "jpg" if fmt == "JPEG" else fmt.lower()
    with zipfile.ZipFile(path, "w") as z:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            image.save(buf, fmt, **save_options)
            z.writestr(f"{stem}{i}.{ext}", buf.getvalue())
    return path


def cloneofsimo_modules(model, ancestor_classes, legacy=False):
    """(path, module) in the order cloneofsimo/lora's ``_find_modules_v2`` numbers a file's layers, written out as
    there (Linear/Conv2d under every module whose class name is targeted). ``legacy``: the numbering of files made
    with diffusers < 0.13, whose transformer blocks registered ``attn1, ff, attn2``."""
    names = {id(m): n for n, m in model.named_modules()}
    found = []
    for ancestor in (m for m in model.modules() if m.__class__.__name__ in ancestor_classes):
        for _, module in ancestor.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                found.append((names[id(module)], module))
    if not legacy:
        return found
    blocks: dict = {}
    for i, (path, module) in enumerate(found):
        block, rank = path, 0
        for part, r in ((".attn1.", 0), (".ff.", 1), (".attn2.", 2)):
            if part in path:
                block, rank = path.split(part)[0], r
        blocks.setdefault(block, []).append((rank, i, path, module))
    return [(p, m) for entries in blocks.values() for _, _, p, m in sorted(entries, key=lambda e: e[:2])]


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """One running ``lora-studio serve`` (SQLite, local files, a Cog worker per model) shared by the API tests.

    Webhook receivers in the tests listen on 127.0.0.1, so that address is allowed for them.
    """
    from service_harness import ServiceProcess

    running = ServiceProcess(
        tmp_path_factory.mktemp("service"),
        # one torch thread per worker on any machine, so a test can draw the same pixels in a process of its own
        # with OMP_NUM_THREADS=1 (another thread count may round a pixel differently)
        env={"LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": "127.0.0.1", "LORA_STUDIO_WORKER_THREADS": "1"},
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL cluster on a free port (``bench.postgres``, shared with the benchmarks)."""
    from bench import postgres

    if postgres.bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
    with postgres.cluster() as url:
        yield url


@pytest.fixture(scope="session")
def js_client_dir(tmp_path_factory) -> Path:
    """tests/js's npm packages (the official JavaScript client, KEDA's schemas), pinned by its lock file and
    installed once per session with ``npm ci``; the folder holds tests/js's scripts too."""
    import shutil
    import subprocess

    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed for tests/js (.ci/run installs them)"
    folder = tmp_path_factory.mktemp("js")
    for path in (Path(__file__).parent / "js").iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=folder, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


# Files that share a session fixture too slow to make twice (the stars preset training, minutes): one process.
SHARED_PROCESS = {"test_generate_loras.py": "stars", "test_predict_train.py": "stars"}


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (``./dev test``), each test process gets its share of the cores for torch and for the
    processes it starts (services, Cog servers, the CLI): N processes each on every core slow each other down
    tenfold. Measured here (2 cores, 2026-12-04): a preset training took 194 s on 1 thread, 184 s on 2."""
    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if processes > 1:
        share = str(max(1, len(os.sched_getaffinity(0)) // processes))
        os.environ.update(OMP_NUM_THREADS=share, MKL_NUM_THREADS=share)
        torch.set_num_threads(int(share))


# The files that take minutes (pytest --durations), started first so that no process is left with one at the end.
LONGEST_FIRST = (
    "test_generate_loras.py",
    "test_predict_train.py",
    "test_bench.py",
    "test_service_faults.py",
    "test_sd15_size.py",
    "test_new_colours.py",
    "test_replicate_client.py",
)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Each file runs whole in one test process, so its module fixtures run once; files in ``SHARED_PROCESS``
    share one. (pytest-xdist's ``--dist loadgroup`` marks do nothing on pytest 9.2: xdist 3.8 renames
    ``item._nodeid``, which pytest no longer reads.)"""
    if config.getvalue("dist") != "load":  # the default of -n; another --dist given is obeyed
        return None
    config.option.loadscopereorder = False  # xdist would put the files with the most tests first
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return SHARED_PROCESS.get(Path(file).name, file)

    return ByFile(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The quick tier (``./dev test -m quick``, about two minutes here) is every test marked neither slow nor medium.

    Files with slow tests run first, ``LONGEST_FIRST`` before the others (in file order otherwise): the test
    processes take whole files, so that none is left with a long one at the end."""
    slow_files = set()
    for item in items:
        if item.get_closest_marker("slow"):
            slow_files.add(item.path)
        elif not item.get_closest_marker("medium"):
            item.add_marker(pytest.mark.quick)

    def rank(item: pytest.Item) -> tuple[int, bool]:  # sorted() is stable: the order within a file is kept
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST), item.path not in slow_files

    items.sort(key=rank)
