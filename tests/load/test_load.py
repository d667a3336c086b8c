"""50 tiny generations from 10 concurrent clients plus 2 trainings on one service (one Cog worker per model):
every prediction ends, none is lost or duplicated, the API answers /health fast throughout; the figures are
written as the benchmark writes them (to a temporary file, never into the repository)."""

from __future__ import annotations

import json
import time

import pytest
import requests

from bench import load, results

pytestmark = pytest.mark.slow  # not in the quick tier (./dev test -m 'not slow')


@pytest.fixture(scope="module")
def report(service):
    token = service.token("load")  # an owner of its own: the shared service's other predictions are not listed
    started = time.monotonic()
    outcome = load.run(service.url, token, generations=50, clients=10, trainings=2, steps=4, size=64, train_steps=30)
    outcome.test_seconds = time.monotonic() - started
    return outcome


def test_every_prediction_ends_and_succeeds(report):
    assert len(report.generations) == 50 and len(report.trainings) == 2
    failed = [(o.id, o.status, o.error) for o in report.outcomes if o.status != "succeeded"]
    assert failed == []


def test_none_is_lost_or_duplicated(report):
    assert len(report.created) == len(set(report.created)) == 52
    assert sorted(report.listed) == sorted(report.created)  # the history, page by page: each exactly once
    assert report.lost == 0
    outputs = [url.split("?")[0] for o in report.generations for url in o.outputs]
    assert len(outputs) == 50 and len(set(outputs)) == 50  # one image each, no file shared or repeated
    for training in report.trainings:
        assert len(training.outputs) == 6  # lora, lora_a1111, embedding, scales_grid, its one checkpoint, report
    for url in (report.generations[0].outputs[0], report.generations[-1].outputs[0], report.trainings[0].outputs[0]):
        assert requests.get(url, timeout=10).status_code == 200  # the signed links work


def test_the_api_stays_responsive_while_the_workers_are_busy(report):
    assert len(report.health_ms) >= 50 and report.health_failures == 0
    assert report.health_p95_ms < 100, sorted(report.health_ms)[-10:]


def test_it_is_bounded_in_time(report):
    assert report.wall_s < 150 and report.test_seconds < 160


def test_the_figures_are_recorded_as_the_benchmark_records_them(report, tmp_path, capsys):
    metrics = load.metrics(report)
    doc = results.write(tmp_path / "results.json", metrics, "test")
    written = {m["name"]: m for m in json.loads((tmp_path / "results.json").read_text())["metrics"]}
    assert set(written) == {
        "load_generation_p50_s",
        "load_generation_p95_s",
        "load_throughput_per_s",
        "load_training_s",
        "load_health_p95_ms",
        "load_lost",
    }
    assert written["load_health_p95_ms"]["met"] and written["load_lost"]["value"] == 0
    assert written["load_generation_p95_s"]["value"] >= written["load_generation_p50_s"]["value"] > 0
    assert doc["machine"]["cores"]
    with capsys.disabled():
        print("\n" + results.table(metrics))
