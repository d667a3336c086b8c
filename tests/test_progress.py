"""Progress lines in tqdm's shape: what Replicate's clients and web page parse, and what our page parses."""

import re

from lora_core import progress
from lora_core.base import checkpoints, sampling
from lora_core.service.web import pages

# The pattern Replicate uses to read a prediction's progress from its logs (the last line that matches wins).
REPLICATE = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)\/(\d+)")


def test_training_lines_are_tqdm_lines_with_the_loss():
    lines: list[str] = []
    meter = progress.Progress(250, lines.append)
    for step in range(1, 251):
        meter.step(step, loss=0.0417)
    assert len(lines) == 20  # every 13 steps (5 %, rounded up) and the last
    for line in lines:
        assert REPLICATE.match(line) and progress.LINE.match(line) and line.endswith("loss=0.0417]"), line
    assert REPLICATE.match(lines[-1]).groups() == ("100", "250", "250")
    shown = pages.progress("\n".join(["task object", *lines[:8]]))
    assert shown is not None and (shown.percent, shown.step, shown.total) == (42, 104, 250)  # the 8th: 8 x 13


def test_sampling_logs_lines_replicate_reads(tiny_pipe):
    lines: list[str] = []
    request = sampling.resolve_request(
        checkpoints.get_checkpoint("tiny").defaults, prompt="a red circle", seed=0, num_inference_steps=10
    )
    sampling.sample(tiny_pipe, request, log=lines.append)
    read = [REPLICATE.match(line) for line in lines]
    assert read and all(read), lines
    assert read[-1].groups() == ("100", "10", "10") and all("sampling" in line for line in lines)


def test_clock_times_read_as_seconds():
    assert [progress.seconds(t) for t in ("00:19", "1:01:40", "?", None)] == [19, 3700, None, None]


def test_drawing_prior_images_logs_lines_replicate_reads(tiny_pipe, tmp_path):
    """The first minute of a GPU training draws them: its progress shows, named, before the training's own."""
    from lora_core.training import prior_images

    lines: list[str] = []
    tiny = checkpoints.get_checkpoint("tiny")
    prior_images.prior_examples(tiny_pipe, tiny, 16, "progress-test", count=10, folder=tmp_path, log=lines.append)
    read = [REPLICATE.match(line) for line in lines]
    assert read and all(read) and all("prior images" in line for line in lines), lines
    assert read[-1].groups() == ("100", "10", "10")
