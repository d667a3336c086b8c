import inspect
import io
import zipfile

import pytest

from lora_core import checkpoints


@pytest.fixture(scope="session")
def tiny_pipe():
    """The committed tiny base, loaded once for the whole session."""
    pipe = checkpoints.load_pipeline(checkpoints.get_checkpoint("tiny"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_predictor(predictor, **given):
    """Call ``run`` the way Cog does: every input present, defaults taken from their ``Input``."""
    params = inspect.signature(predictor.run).parameters
    inputs = {name: getattr(param.default, "default", param.default) for name, param in params.items()}
    return predictor.run(**{**inputs, **given})


def zip_images(path, images, fmt="PNG", stem="img", **save_options):
    """A zip upload of PIL images, as a user makes one."""
    ext = "jpg" if fmt == "JPEG" else fmt.lower()
    with zipfile.ZipFile(path, "w") as z:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            image.save(buf, fmt, **save_options)
            z.writestr(f"{stem}{i}.{ext}", buf.getvalue())
    return path
