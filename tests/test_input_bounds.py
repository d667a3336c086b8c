"""Every input's bounds agree between the predictor (what Cog's schema, the API's 422s and the web form show) and
the job's pydantic model (what the worker enforces). Cog reads the predictors' ``Input(...)`` from source, so the
bounds are written there as literals; this check keeps them one fact. A drift would let a value pass the API and
fail later in the worker (``learning_rate=0`` did). ``multiple_of`` has no Cog spelling: the worker's message says it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_core.base import sampling
from lora_core.tools import cog_schema
from lora_core.training import training_job

ROOT = Path(__file__).resolve().parents[1]
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxLength", "minLength")


def _model_bounds(model) -> dict[str, dict]:
    """Field -> its numeric/length bounds in the model's JSON schema (an Optional's non-null branch)."""
    out = {}
    for name, prop in model.model_json_schema()["properties"].items():
        branches = prop.get("anyOf", [prop])
        out[name] = {k: v for b in branches for k, v in b.items() if k in BOUNDS}
    return out


def _predictor_bounds(ref: str) -> dict[str, dict]:
    doc = cog_schema.openapi_schema(ref, root=ROOT)
    props = doc["components"]["schemas"]["Input"]["properties"]
    return {name: {k: v for k, v in prop.items() if k in BOUNDS} for name, prop in props.items()}


@pytest.mark.parametrize(
    ("ref", "model"),
    [
        ("predict_train.py:Predictor", training_job.TrainingRequest),
        ("predict_generate.py:Predictor", sampling.SamplingRequest),
    ],
)
def test_predictor_and_job_model_declare_the_same_bounds(ref, model):
    predictor, job = _predictor_bounds(ref), _model_bounds(model)
    shared = sorted(set(predictor) & set(job))
    assert len(shared) >= 8, shared  # the check compares real fields, not an empty overlap
    for name in shared:
        assert predictor[name] == job[name], f"{name}: predictor {predictor[name]} != job model {job[name]}"
