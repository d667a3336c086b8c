"""Hostile parameters: refused at the API with 422 naming the field (or 413 for a body too large) when the
schema can tell, else failing only their own prediction with a sentence; the next prediction succeeds."""

from __future__ import annotations

import json
import re

import pytest

from lora_core.base import sampling

from .conftest import GENERATE, still_serves, timed

REFUSED = {  # raw JSON body -> (field, phrase in its description)
    "negative steps": (
        '{"input": {"prompt": "x", "num_inference_steps": -5}}',
        "input.num_inference_steps",
        "greater than or equal to 1",
    ),
    "width 10000": ('{"input": {"prompt": "x", "width": 10000}}', "input.width", "less than or equal to 1024"),
    "a prompt of 100k characters": (
        json.dumps({"input": {"prompt": "a" * 100_000}}),
        "input.prompt",
        "at most 2000 characters long, got 100000",
    ),
    "a negative prompt of 100k characters": (
        json.dumps({"input": {"prompt": "x", "negative_prompt": "b" * 100_000}}),
        "input.negative_prompt",
        "at most 2000 characters",
    ),
    "unknown base model": (
        '{"input": {"prompt": "x", "base_model": "sdxl-turbo"}}',
        "input.base_model",
        "must be one of: tiny, tiny-xl, sd-1.5",
    ),
    "unknown scheduler": (
        '{"input": {"prompt": "x", "scheduler": "LCM"}}',
        "input.scheduler",
        "must be one of: DPMSolverMultistep",
    ),
    "a number as the prompt": ('{"input": {"prompt": 5}}', "input.prompt", "must be of type string, got 5"),
    "a string as num_outputs": (
        '{"input": {"prompt": "x", "num_outputs": "two"}}',
        "input.num_outputs",
        "must be of type integer",
    ),
    "a fraction as the seed": ('{"input": {"prompt": "x", "seed": 1.5}}', "input.seed", "integer"),
    "a list as lora_urls": (
        '{"input": {"prompt": "x", "lora_urls": ["a", "b"]}}',
        "input.lora_urls",
        "must be of type string",
    ),
    "an object as the scales": (
        '{"input": {"prompt": "x", "lora_scales": {"a": 1}}}',
        "input.lora_scales",
        "must be of type string",
    ),
    "no prompt": ('{"input": {}}', "input.prompt", "prompt is required"),
    "an unknown input": ('{"input": {"prompt": "x", "promt2": "y"}}', "input.promt2", "unknown input"),
    "input not an object": ('{"input": ["prompt", "x"]}', "input", ""),
    "NaN guidance": (
        '{"input": {"prompt": "x", "guidance_scale": NaN}}',
        "input.guidance_scale",
        "must be a finite number, got nan",
    ),
    "infinite guidance": (
        '{"input": {"prompt": "x", "guidance_scale": Infinity}}',
        "input.guidance_scale",
        "must be a finite number, got inf",
    ),
    "-Infinity as the seed": ('{"input": {"prompt": "x", "seed": -Infinity}}', "input.seed", "finite"),
    "a webhook that is not a string": ('{"input": {"prompt": "x"}, "webhook": 5}', "webhook", "string"),
    "an unknown event filter": (
        '{"input": {"prompt": "x"}, "webhook_events_filter": ["everything"]}',
        "webhook_events_filter.0",
        "'start', 'output', 'logs' or 'completed'",
    ),
    "not JSON at all": ("prompt=x&width=10000", "body", "the request body is not valid JSON"),
    "a JSON array body": ('[{"prompt": "x"}]', "body", "valid dictionary"),
    "JSON nested 100,000 deep": ('{"input": ' + "[" * 100_000 + "]" * 100_000 + "}", "body", "nested too deeply"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_hostile_request_is_refused_with_422_naming_the_field(hardened, alice, case):
    body, field, phrase = REFUSED[case]
    r = alice(
        "POST",
        f"/v1/models/{GENERATE}/predictions",
        data=body,
        headers={"Content-Type": "application/json", "Prefer": "wait=30"},
    )
    assert r.status_code in (400, 422), (r.status_code, r.text[:500])
    detail = r.json()
    assert detail["status"] == r.status_code and detail["title"]
    if field:
        fields = {f["field"]: f["description"] for f in detail.get("invalid_fields", [])}
        assert field in fields, detail
        assert phrase in fields[field], fields[field]
        assert f"- {field}: " in detail["detail"]  # what the official client prints
    else:
        assert phrase in detail["detail"], detail
    assert alice("GET", "/v1/predictions").status_code == 200  # nothing half-made that breaks the history
    still_serves(alice, hardened.files)  # and nothing stuck in the queue


FAILED = {  # input -> the sentence the prediction fails with (checked by the predictor, before any download)
    "more scales than LoRAs": (
        {"lora_urls": "{good}|{good}", "lora_scales": "0.5|0.5|0.5"},
        "lora_scales has 3 values for 2 LoRA URLs",
    ),
    "a NaN scale": ({"lora_urls": "{good}", "lora_scales": "nan"}, "'nan' is not a finite number"),
    "an infinite scale": ({"lora_urls": "{good}", "lora_scales": "inf"}, "'inf' is not a finite number"),
    "a scale overflowing to infinity": ({"lora_urls": "{good}", "lora_scales": "1e309"}, "not a finite number"),
    "a scale of 5": ({"lora_urls": "{good}", "lora_scales": "5"}, "5.0 is outside -2.0..2.0"),
    "a scale that is not a number": ({"lora_urls": "{good}", "lora_scales": "lots"}, "'lots' is not a number"),
    "<3> with two URLs": (
        {"prompt": "<1> next to <3>", "lora_urls": "{good}|{good}"},
        "mentions <3>, but 2 LoRA URL(s) were given",
    ),
    "<1> with no URLs": ({"prompt": "a photo of <1>"}, "mentions <1>, but no LoRA URLs were given"),
    "an A1111 tag naming a missing LoRA": (
        {"prompt": "x <lora:9:0.5>", "lora_urls": "{good}"},
        "names LoRA 9, but 1 LoRA URL(s) were given",
    ),
    "an empty URL between pipes": ({"lora_urls": "{good}||{good}"}, "empty entry at position 2"),
    "a width that is not a multiple of 8": ({"width": 100}, "width: Input should be a multiple of 8 (got 100)"),
}


@pytest.mark.parametrize("case", FAILED)
def test_parameters_that_do_not_fit_fail_their_own_prediction(hardened, alice, case):
    given, sentence = FAILED[case]
    good = f"{hardened.files.url}/good.safetensors"
    input = {
        "prompt": "a photo of <1>" if "{good}" in given.get("lora_urls", "") else "a red circle",
        "num_inference_steps": 2,
        **{k: v.replace("{good}", good) if isinstance(v, str) else v for k, v in given.items()},
    }
    result, seconds = timed(alice, GENERATE, input)
    assert result["status"] == "failed", result
    assert sentence in result["error"], result["error"]
    assert "\n" not in result["error"] and len(result["error"]) < 400  # one sentence, not a page of pydantic
    assert seconds < 10
    still_serves(alice, hardened.files)


def test_an_oversized_request_body_is_413(hardened, alice):
    """Declared or streamed without a length, a body over the limit (4 MB here) is refused, and nothing is made."""
    before = len(alice("GET", "/v1/predictions").json()["results"])
    big = json.dumps({"input": {"prompt": "x", "negative_prompt": "y" * (5 * 2**20)}})
    declared = alice(
        "POST", f"/v1/models/{GENERATE}/predictions", data=big, headers={"Content-Type": "application/json"}
    )
    streamed = alice(
        "POST",
        f"/v1/models/{GENERATE}/predictions",
        data=iter([big[i : i + 2**16].encode() for i in range(0, len(big), 2**16)]),
        headers={"Content-Type": "application/json"},
    )
    for r in (declared, streamed):
        assert r.status_code == 413 and re.search(r"over the 4 MB limit", r.json()["detail"]), r.text[:300]
    assert len(alice("GET", "/v1/predictions").json()["results"]) == before
    still_serves(alice, hardened.files)


def test_the_prompt_limit_is_the_samplers(alice):
    """The schema's maxLength (what the API checks) is the sampler's own limit."""
    schema = alice("GET", f"/v1/models/{GENERATE}").json()["latest_version"]["openapi_schema"]
    props = schema["components"]["schemas"]["Input"]["properties"]
    assert props["prompt"]["maxLength"] == props["negative_prompt"]["maxLength"] == sampling.MAX_PROMPT_CHARS


def test_training_settings_that_do_not_fit_fail_with_one_line(hardened, alice):
    from . import zips
    from .conftest import TRAIN, data_uri

    result, seconds = timed(
        alice, TRAIN, {"instance_data": data_uri(zips.make(zips.three_images())), "task": "object", "resolution": 100}
    )
    assert result["status"] == "failed" and seconds < 10
    assert result["error"] == "SettingsError: resolution: Input should be a multiple of 8 (got 100)", result["error"]
