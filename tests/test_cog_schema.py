"""lora_core.tools.cog_schema: the OpenAPI schema Cog's Go `cog build` writes, generated from Python.

Expectations are ported from github.com/replicate/cog (snapshot in /work/.mirror/replicate+cog):
Go unit tests in pkg/schema/openapi_spec_test.go and generator_test.go, and the exact JSON fragments
that the integration tests in integration-tests/tests/*.txtar find in the schema `cog build` embeds.
No model is loaded: our predictors are only imported; server checks use tiny sample predictors.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lora_core import cli
from lora_core.base import checkpoints, sampling
from lora_core.service.workers import cog_process
from lora_core.tools import cog_schema

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    """A throw-away Cog project: ``project(**{"predict.py": source})``; its modules are forgotten after."""

    def write(**files: str) -> Path:
        for name, text in files.items():
            (tmp_path / name).write_text(textwrap.dedent(text))
        return tmp_path

    yield write
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def _schemas(doc: dict) -> dict:
    return doc["components"]["schemas"]


def _props(doc: dict, key: str = "Input") -> dict:
    return _schemas(doc)[key]["properties"]


# --- Structure (pkg/schema/openapi_spec_test.go: TestGeneratesValidOpenAPI, TestPredictEndpoints,
# --- TestTrainEndpoints, TestFixedComponentSchemas; generator_test.go: TestGenerateFromSourceTrainMode)

SIMPLE = """
    from cog import BaseRunner

    class Predictor(BaseRunner):
        def run(self, s: str) -> str:
            return s
"""

# integration-tests/tests/train_basic.txtar: a predict class and a train function in one cog.yaml
TRAIN_BASIC = """
    from cog import BaseModel, Input, Path

    class TrainingOutput(BaseModel):
        weights: Path

    def train(n: int) -> TrainingOutput:
        return TrainingOutput(weights=Path("weights.bin"))
"""


def test_predict_document_structure(project):
    doc = cog_schema.openapi_schema("predict.py:Predictor", root=project(**{"predict.py": SIMPLE}))
    assert (doc["openapi"], doc["info"]) == ("3.0.2", {"title": "Cog", "version": cog_schema.COG_VERSION})
    assert list(doc["paths"]) == ["/", "/health-check", "/predictions", "/predictions/{prediction_id}/cancel"]
    post = doc["paths"]["/predictions"]["post"]
    assert (post["summary"], post["operationId"]) == ("Predict", "predict_predictions_post")
    assert set(post["responses"]) == {"200", "422"}
    assert list(_schemas(doc)) == [
        "Input",
        "Output",
        "PredictionRequest",
        "PredictionResponse",
        "Status",
        "HTTPValidationError",
        "ValidationError",
    ]
    request, response = _schemas(doc)["PredictionRequest"], _schemas(doc)["PredictionResponse"]
    assert request["properties"]["input"] == {"$ref": "#/components/schemas/Input"}
    assert response["properties"]["output"] == {"$ref": "#/components/schemas/Output"}
    assert _schemas(doc)["Input"]["required"] == ["s"]  # TestInputRequiredField
    assert _schemas(doc)["Output"] == {"title": "Output", "type": "string"}  # TestOutputSingle
    cancel = doc["paths"]["/predictions/{prediction_id}/cancel"]["post"]["parameters"][0]
    assert cancel == {
        "in": "path",
        "name": "prediction_id",
        "required": True,
        "schema": {"title": "Prediction Id", "type": "string"},
    }


def test_train_mode_and_combined_document(project):
    root = project(**{"predict.py": SIMPLE, "train.py": TRAIN_BASIC})
    train = cog_schema.openapi_schema(None, "train.py:train", root=root)
    post = train["paths"]["/trainings"]["post"]
    assert (post["summary"], post["operationId"]) == ("Train", "train_trainings_post")
    assert "/trainings/{training_id}/cancel" in train["paths"]
    assert {"TrainingInput", "TrainingOutput", "TrainingRequest", "TrainingResponse"} <= set(_schemas(train))
    assert _schemas(train)["TrainingInput"]["title"] == "TrainingInput"
    assert _schemas(train)["TrainingOutput"]["properties"]["weights"] == {
        "format": "uri",
        "title": "Weights",
        "type": "string",
    }
    # GenerateCombined: both modes merged, then written by json.MarshalIndent (every key sorted)
    combined = cog_schema.openapi_schema("predict.py:Predictor", "train.py:train", root=root)
    assert {"/predictions", "/trainings", "/trainings/{training_id}/cancel"} <= set(combined["paths"])
    assert {"Input", "TrainingInput"} <= set(_schemas(combined))
    text = cog_schema.openapi_json("predict.py:Predictor", "train.py:train", root=root)
    assert text.startswith('{\n  "components": {\n    "schemas": {\n      "HTTPValidationError": {\n')
    assert json.loads(text) == combined and list(combined["paths"]) == sorted(combined["paths"])


def test_merge_keeps_the_predict_components():
    """MergeSchemas adds only what the predict document lacks: an enum both modes name stays predict's."""
    predict = {"paths": {"/": 1}, "components": {"schemas": {"size": "predict's"}}}
    train = {"paths": {"/": 2, "/trainings": 3}, "components": {"schemas": {"size": "train's", "T": 4}}}
    merged = cog_schema.merge_schemas(predict, train)
    assert merged == {"paths": {"/": 1, "/trainings": 3}, "components": {"schemas": {"size": "predict's", "T": 4}}}


# --- Inputs: exact fragments the integration tests grep in the compact schema `cog build` embeds

STATIC_SCHEMA_GEN = """
    from cog import BasePredictor, Input, Path

    class Predictor(BasePredictor):
        def predict(
            self,
            text: str,
            image: Path,
            count: int = Input(description="Number of iterations", default=5, ge=1, le=100),
            mode: str = Input(description="Quality mode", default="fast", choices=["fast", "balanced", "quality"]),
        ) -> str:
            return text
"""

COMPLEX = """
    from typing import Optional

    from cog import BaseModel, BasePredictor, Input, Path, Secret

    class Output(BaseModel):
        text: str
        score: float

    class Predictor(BasePredictor):
        def predict(
            self,
            prompt: str = Input(description="The prompt", default="hello"),
            temperature: float = Input(description="Sampling temp", ge=0, le=2, default=0.7),
            style: str = Input(description="Style", choices=["fast", "balanced", "quality"], default="balanced"),
            api_key: Secret = Input(description="API key"),
            image: Optional[Path] = Input(description="Optional image", default=None),
        ) -> Output:
            return Output(text=prompt, score=temperature)
"""

SECRET_OPTIONAL = """
    from cog import BasePredictor, Input, Secret

    class Predictor(BasePredictor):
        def predict(
            self,
            prompt: str = Input(description="Text prompt"),
            api_key: Secret = Input(description="Your API key (optional — uses proxy if omitted)", default=None),
            api_key_required: Secret = Input(description="Required API key"),
            seed: int = Input(description="Random seed", default=None),
        ) -> str:
            return prompt
"""

OPAQUE = """
    from typing import Annotated, List

    from cog import BaseModel, BasePredictor, Opaque
    from third_party import ExternalObject

    class Output(BaseModel):
        result: Annotated[ExternalObject, Opaque]
        results: Annotated[List[ExternalObject], Opaque]

    class Predictor(BasePredictor):
        def predict(self, payload: Annotated[ExternalObject, Opaque],
                    items: Annotated[List[ExternalObject], Opaque]) -> Output:
            return Output(result=payload, results=items)
"""

ACCEPT = """
    from typing import Optional

    from cog import BasePredictor, Input, Path

    class Predictor(BasePredictor):
        def predict(
            self,
            prompt: str = Input(description="Text prompt", default="test"),
            image: Path = Input(description="Input image", accept="image/*"),
            audio: Optional[Path] = Input(description="Audio clip", accept="audio/wav,audio/mp3", default=None),
            weights: Optional[Path] = Input(description="Model weights", accept=".safetensors,.bin", default=None),
        ) -> str:
            return prompt
"""

# (txtar file, predictor source, fragments its `stdout '...'` lines require)
TXTAR_CASES = [
    (
        "build_openapi_schema",
        """
        from cog import BasePredictor, Path

        class Predictor(BasePredictor):
            def predict(self, text: str, path: Path) -> Path:
                return path
     """,
        ['"title":"Input"', '"required":["text","path"]', '"format":"uri"', f'"version":"{cog_schema.COG_VERSION}"'],
    ),
    (
        "static_schema_gen",
        STATIC_SCHEMA_GEN,
        [
            '"openapi":"3.0.2"',
            '"type":"integer"',
            '"default":5',
            '"enum":["fast","balanced","quality"]',
            '"format":"uri"',
            '"required":["text","image"]',
        ],
    ),
    (
        "build_openapi_schema_complex",
        COMPLEX,
        [
            '"minimum":0',
            '"maximum":2',
            '"enum":["fast","balanced","quality"]',
            '"x-cog-secret":true',
            '"default":"hello"',
            '"Output"',
        ],
    ),
    (
        "static_schema_secret_optional",
        SECRET_OPTIONAL,
        ['"format":"password"', '"nullable":true', '"default":null', '"required":["prompt","api_key_required","seed"]'],
    ),
    (
        "dict_input",
        """
        from cog import BasePredictor

        class Predictor(BasePredictor):
            def predict(self, data: dict) -> str:
                return ""
     """,
        ['"data":{"title":"Data","type":"object","x-order":0}', '"required":["data"]'],
    ),
    (
        "list_dict_input",
        """
        from cog import BasePredictor

        class Predictor(BasePredictor):
            def predict(self, messages: list[dict]) -> str:
                return ""
     """,
        [
            '"messages":{"items":{"type":"object"},"title":"Messages","type":"array","x-order":0}',
            '"required":["messages"]',
        ],
    ),
    (
        "typing_dict_input",
        """
        from typing import Any, Dict, List

        from cog import BasePredictor

        class Predictor(BasePredictor):
            def predict(self, data: Dict[str, Any], items: List[Dict[str, Any]]) -> str:
                return ""
     """,
        [
            '"data":{"title":"Data","type":"object","x-order":0}',
            '"items":{"items":{"type":"object"},"title":"Items","type":"array","x-order":1}',
        ],
    ),
    (
        "static_schema_opaque",
        OPAQUE,
        [
            '"payload":{"title":"Payload","type":"object","x-order":0}',
            '"items":{"items":{"type":"object"},"title":"Items","type":"array","x-order":1}',
            '"result":{"title":"Result","type":"object"}',
            '"results":{"items":{"type":"object"},"title":"Results","type":"array"}',
            '"required":["payload","items"]',
            '"required":["result","results"]',
        ],
    ),
    (
        "accept_mime_type",
        ACCEPT,
        ['"x-cog-accept":"image/*"', '"x-cog-accept":"audio/wav,audio/mp3"', '"x-cog-accept":".safetensors,.bin"'],
    ),
    (
        "multi_file_schema",
        """
        from cog import BasePredictor
        from output_types import Output

        class Predictor(BasePredictor):
            def predict(self, prompt: str) -> Output:
                return Output(text=prompt, score=1.0, tags=["default"])
     """,
        ['"type":"object"', '"text":', '"score":', '"tags":', '"required":["prompt"]'],
    ),
]

HELPER_FILES = {  # imported by the cases above, as in their txtar files
    "third_party.py": "class ExternalObject:\n    pass\n",
    "output_types.py": "from pydantic import BaseModel\n\n\nclass Output(BaseModel):\n"
    "    text: str\n    score: float\n    tags: list[str]\n",
}


@pytest.mark.parametrize("name, source, fragments", TXTAR_CASES, ids=[c[0] for c in TXTAR_CASES])
def test_integration_test_fragments(project, name, source, fragments):
    root = project(**{"predict.py": source, **HELPER_FILES})
    text = cog_schema.openapi_json("predict.py:Predictor", root=root)
    for fragment in fragments:
        assert fragment in text, f"integration-tests/tests/{name}.txtar expects {fragment}"


def test_choices_become_enum_components(project):
    """TestChoicesGenerateEnum / TestIntegerChoices: allOf $ref to a component named after the input."""
    doc = cog_schema.openapi_schema("predict.py:Predictor", root=project(**{"predict.py": STATIC_SCHEMA_GEN}))
    assert _props(doc)["mode"] == {
        "allOf": [{"$ref": "#/components/schemas/mode"}],
        "default": "fast",
        "description": "Quality mode",
        "x-order": 3,
    }
    assert _schemas(doc)["mode"] == {
        "description": "An enumeration.",
        "enum": ["fast", "balanced", "quality"],
        "title": "mode",
        "type": "string",
    }
    assert list(_schemas(doc))[:3] == ["Input", "Output", "mode"]
    root = project(
        **{
            "sizes.py": """
        from cog import BaseRunner, Input

        class Predictor(BaseRunner):
            def run(self, size: int = Input(default=512, choices=[256, 512, 1024])) -> str:
                return str(size)
    """
        }
    )
    size = _schemas(cog_schema.openapi_schema("sizes.py:Predictor", root=root))["size"]
    assert (size["type"], size["enum"]) == ("integer", [256, 512, 1024])


def test_required_default_and_nullable_rules(project):
    """TestNoneDefaultOnRequiredTypeIsRequired, TestNoneDefaultOnOptionalTypeEmitsNull,
    TestNoneDefaultOnBareSecretIsOptional, TestBareSecretWithoutDefaultRemainsRequired,
    optional_input_no_default.txtar (bare Optional: nullable, not required, no default)."""
    root = project(
        **{
            "predict.py": """
        from typing import Optional

        from cog import BaseRunner, Input, Secret

        class Predictor(BaseRunner):
            def run(self, value: Optional[str], image: Optional[str] = Input(default=None),
                    seed: int = Input(default=None), key: Secret = Input(default=None),
                    token: Secret = Input(description="needed")) -> str:
                return ""
    """
        }
    )
    doc = cog_schema.openapi_schema("predict.py:Predictor", root=root)
    props = _props(doc)
    assert props["value"] == {"nullable": True, "title": "Value", "type": "string", "x-order": 0}
    assert props["image"] == {"default": None, "nullable": True, "title": "Image", "type": "string", "x-order": 1}
    assert props["seed"] == {"title": "Seed", "type": "integer", "x-order": 2}
    assert props["key"]["nullable"] is True and props["key"]["default"] is None
    assert props["token"] == {
        "description": "needed",
        "format": "password",
        "title": "Token",
        "type": "string",
        "writeOnly": True,
        "x-cog-secret": True,
        "x-order": 4,
    }
    assert _schemas(doc)["Input"]["required"] == ["seed", "token"]


def test_constraints_lists_and_unions(project):
    """TestInputStringConstraints, TestInputDeprecated, TestInputRepeatedType, TestInputOptionalRepeatedType,
    TestOpenAPIUnionInputStringFloat, TestOpenAPIRequiredNullableUnionInput (exact JSON there)."""
    root = project(
        **{
            "predict.py": """
        from typing import Optional

        from cog import BaseRunner, Input, Path

        class Predictor(BaseRunner):
            def run(self, name: str = Input(min_length=1, max_length=100, regex="^[a-z]+$"),
                    old_param: str = Input(default="x", deprecated=True),
                    items: list[str] = Input(description="Items"),
                    files: Optional[list[Path]] = Input(default=None),
                    value: str | float = Input(),
                    maybe: str | float | None = Input()) -> str:
                return ""
    """
        }
    )
    text = cog_schema.openapi_json("predict.py:Predictor", root=root)
    for fragment in [
        '"name":{"maxLength":100,"minLength":1,"pattern":"^[a-z]+$","title":"Name","type":"string","x-order":0}',
        '"old_param":{"default":"x","deprecated":true,"title":"Old Param","type":"string","x-order":1}',
        '"items":{"description":"Items","items":{"type":"string"},"title":"Items","type":"array","x-order":2}',
        '"files":{"default":null,"items":{"format":"uri","type":"string"},"nullable":true,"title":"Files",'
        '"type":"array","x-order":3}',
        '"value":{"anyOf":[{"type":"string"},{"type":"number"}],"title":"Value","x-order":4}',
        '"maybe":{"anyOf":[{"nullable":true,"type":"string"},{"nullable":true,"type":"number"}],"nullable":true,'
        '"title":"Maybe","x-order":5}',
        '"required":["name","items","value","maybe"]',
    ]:
        assert fragment in text


OUTPUT_CASES = [  # TestOutputList, TestOutputIterator, TestOutputConcatenateIterator, TestOutputPath
    ("list[str]", {"items": {"type": "string"}, "title": "Output", "type": "array"}),
    (
        "Iterator[str]",
        {"items": {"type": "string"}, "title": "Output", "type": "array", "x-cog-array-type": "iterator"},
    ),
    (
        "ConcatenateIterator[str]",
        {
            "items": {"type": "string"},
            "title": "Output",
            "type": "array",
            "x-cog-array-display": "concatenate",
            "x-cog-array-type": "iterator",
        },
    ),
    ("Path", {"format": "uri", "title": "Output", "type": "string"}),
    ("list[Path]", {"items": {"format": "uri", "type": "string"}, "title": "Output", "type": "array"}),
    (
        "Scored",
        {
            "title": "Output",
            "type": "object",
            "required": ["name", "score"],
            "properties": {  # TestOutputObject
                "name": {"title": "Name", "type": "string"},
                "score": {"title": "Score", "type": "number"},
                "notes": {"nullable": True, "title": "Notes", "type": "string"},
            },
        },
    ),
]


@pytest.mark.parametrize("annotation, expected", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_output_types(project, annotation, expected):
    root = project(
        **{
            "predict.py": f"""
        from typing import Iterator, Optional

        from cog import BaseModel, BaseRunner, ConcatenateIterator, Path

        class Scored(BaseModel):
            name: str
            score: float
            notes: Optional[str] = None

        class Predictor(BaseRunner):
            def run(self) -> {annotation}:
                raise NotImplementedError
    """
        }
    )
    assert _schemas(cog_schema.openapi_schema("predict.py:Predictor", root=root))["Output"] == expected


def test_streaming_extension(project):
    """TestPredictionOperationIncludesStreamingExtensionWhenEnabled / ...OmitsStreamingExtensionByDefault /
    TestTrainingOperationOmitsStreamingExtensionWhenEnabled."""
    root = project(
        **{
            "predict.py": """
        from typing import Iterator

        import cog

        class Predictor(cog.BaseRunner):
            @cog.streaming
            def run(self) -> Iterator[str]:
                yield "a"

        @cog.streaming
        def train() -> Iterator[str]:
            yield "a"

        def plain() -> Iterator[str]:
            yield "a"
    """
        }
    )
    predict = cog_schema.openapi_schema("predict.py:Predictor", root=root)
    assert predict["paths"]["/predictions"]["post"]["x-cog-streaming"] is True
    plain = cog_schema.openapi_schema("predict.py:plain", root=root)["paths"]["/predictions"]["post"]
    assert "x-cog-streaming" not in plain
    train = cog_schema.openapi_schema(None, "predict.py:train", root=root)["paths"]["/trainings"]["post"]
    assert "x-cog-streaming" not in train


UNSUPPORTED = [
    ("def run(self) -> dict[str, int]:", "Predictor", "predict", "typed dict outputs"),
    ("@cog.streaming\n            def run(self) -> str:", "Predictor", "predict", "@streaming requires Iterator"),
    ("def run(self, s: str = cog.Input(accept='image/*')) -> str:", "Predictor", "predict", "accept is only valid"),
    ("def run(self) -> str:", "Predictor", "train", r"has no train\(\) method"),
    ("def run(self) -> str:", "Missing", "predict", "defines no Missing"),
]


@pytest.mark.parametrize("signature, name, mode, message", UNSUPPORTED, ids=[u[3] for u in UNSUPPORTED])
def test_unsupported_cases_raise(project, signature, name, mode, message):
    root = project(
        **{
            "predict.py": f"""
        import cog

        class Predictor(cog.BaseRunner):
            {signature}
                raise NotImplementedError
    """
        }
    )
    with pytest.raises(ValueError, match=message):
        cog_schema.predictor_info(f"predict.py:{name}", mode, root)


def test_typeddict_output_raises(project):
    """typeddict_output.txtar: Go writes the TypedDict's properties; the SDK only sees an object."""
    root = project(
        **{
            "predict.py": """
        from typing import NotRequired, TypedDict

        from cog import BasePredictor

        class Output(TypedDict):
            name: str
            count: NotRequired[int]

        class Predictor(BasePredictor):
            def predict(self) -> Output:
                return {"name": "alice", "count": 3}
    """
        }
    )
    with pytest.raises(ValueError, match="typed dict outputs"):
        cog_schema.predictor_info("predict.py:Predictor", root=root)


@pytest.mark.parametrize("ref", ["predict.py", ":Predictor", "predict.py:", "../predict.py:Predictor"])
def test_invalid_references(ref):
    """generator_test.go: TestParsePredictRef; cleanSourceFilePath rejects paths outside the project."""
    with pytest.raises(ValueError):
        cog_schema.predictor_info(ref, root=ROOT)


# --- Go's post-processing and encoding


def test_post_processing():
    """TestRemoveTitleNextToRef(Nested), TestFixNullableAnyOf, TestFixNullableAnyOfNoOp."""
    with_ref = {"properties": {"inner": {"title": "Inner", "$ref": "#/components/schemas/Foo"}}}
    cog_schema._remove_title_next_to_ref(with_ref)
    assert with_ref == {"properties": {"inner": {"$ref": "#/components/schemas/Foo"}}}
    nullable = {"anyOf": [{"type": "string"}, {"type": "null"}]}
    cog_schema._fix_nullable_any_of(nullable)
    assert nullable == {"type": "string", "nullable": True}
    union = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    cog_schema._fix_nullable_any_of(union)
    assert union == {"anyOf": [{"type": "string"}, {"type": "integer"}]}


def test_title_case_and_go_json():
    """TestTitleCaseWords; encoding/json: shortest floats, 'e' outside [1e-6, 1e21), HTML escaping."""
    assert [cog_schema.title_case(s) for s in ("hello_world", "segmented_image", "name", "lora_a1111")] == [
        "Hello World",
        "Segmented Image",
        "Name",
        "Lora A1111",
    ]
    assert (
        cog_schema.go_json({"b": [1.0, 0.7, 1e-7, 1e21, 2**32 - 1], "a": "<1> & ü"})
        == '{"b":[1,0.7,1e-7,1e+21,4294967295],"a":"\\u003c1\\u003e \\u0026 ü"}'
    )
    assert (
        cog_schema.go_json({"a": [], "b": {}, "c": [1]}, indent=True)
        == '{\n  "a": [],\n  "b": {},\n  "c": [\n    1\n  ]\n}'
    )


# --- Our predictors (imported only: setup() is never called)


def test_generation_predictor_schema():
    from predict_generate import Predictor

    doc = cog_schema.openapi_schema("predict_generate.py:Predictor", root=ROOT)
    props, schemas = _props(doc), _schemas(doc)
    assert schemas["Input"]["required"] == ["prompt"]
    assert {k: props["num_outputs"][k] for k in ("type", "minimum", "maximum", "default")} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 4,
        "default": 1,
    }
    # empty: the deployment's default base (LORA_STUDIO_DEFAULT_BASE: sd-1.5 on the GPU images, tiny here)
    assert props["base_model"]["default"] is None and props["base_model"]["nullable"] is True
    _names_every_base(props["base_model"], schemas)
    assert schemas["scheduler"]["enum"] == list(sampling.SCHEDULER_NAMES)
    assert props["seed"]["maximum"] == sampling.MAX_SEED and props["seed"]["nullable"] is True
    signature = list(inspect.signature(Predictor.run).parameters)[1:]
    assert list(props) == signature and [props[n]["x-order"] for n in signature] == list(range(len(signature)))
    assert schemas["Output"] == {"items": {"format": "uri", "type": "string"}, "title": "Output", "type": "array"}
    text = cog_schema.openapi_json("predict_generate.py:Predictor", root=ROOT)
    assert '"maximum":4,"minimum":1' in text and "\\u003c1\\u003e" in text  # "<1>" as Go escapes it


def _names_every_base(prop: dict, schemas: dict) -> None:
    """``base_model`` is free text, no enum (Cog would refuse a checkpoint URL), whose description lists every registry
    name (written out: Cog's build reads descriptions without importing lora_core) and whose length bound is the
    one the provenance and the training request keep."""
    assert prop["type"] == "string" and "base_model" not in schemas and "allOf" not in prop
    assert prop["maxLength"] == checkpoints.BASE_MODEL_MAX_CHARS
    listed = prop["description"].split("(", 1)[1].split(")", 1)[0]
    assert sorted(listed.split(", ")) == sorted(checkpoints.REGISTRY), listed


def test_training_predictor_signature():
    """predict_train.py's run() as Cog sees it (served with COG_PREDICT_TYPE_STUB)."""
    doc = cog_schema.openapi_schema("predict_train.py:Predictor", root=ROOT)
    props, schemas = _props(doc), _schemas(doc)
    assert props["instance_data"]["format"] == "uri" and props["instance_data"]["type"] == "string"
    assert schemas["Input"]["required"] == ["instance_data"]
    assert schemas["task"]["enum"] == ["face", "object", "style"]
    _names_every_base(props["base_model"], schemas)
    assert props["seed"]["maximum"] == sampling.MAX_SEED
    assert [p["x-order"] for p in props.values()] == list(range(len(props)))
    assert schemas["Output"]["required"] == ["lora", "lora_a1111", "embedding", "scales_grid", "checkpoints", "report"]
    assert schemas["Output"]["properties"]["checkpoints"]["items"] == {"format": "uri", "type": "string"}
    assert all(p.get("items", p)["format"] == "uri" for p in schemas["Output"]["properties"].values())


def test_each_cog_config_serves_one_model_and_its_committed_schema_is_current():
    """cog.yaml: the generation model; cog-train.yaml: the training model (its predictions are trainings)."""
    assert cog_schema.cog_yaml_refs(ROOT) == ("predict_generate.py:Predictor", None)
    assert cog_schema.cog_yaml_refs(ROOT, "cog-train.yaml") == ("predict_train.py:Predictor", None)
    for config, ref in (
        ("cog.yaml", "predict_generate.py:Predictor"),
        ("cog-train.yaml", "predict_train.py:Predictor"),
    ):
        committed = cog_schema.schema_file(ROOT, config)
        assert committed.read_text() == cog_schema.openapi_json(ref, root=ROOT), f"run `lora-studio schema` ({config})"


# --- The CLI


def test_cli_schema_writes_and_checks(project, monkeypatch, capsys):
    root = project(
        **{
            "cog.yaml": 'predict: "predict.py:Predictor"\ntrain: "train.py:train"\n',
            "predict.py": SIMPLE,
            "train.py": TRAIN_BASIC,
        }
    )
    monkeypatch.chdir(root)
    out = root / ".cog" / "openapi_schema.json"
    assert cli.main(["schema", "--check"]) == 1 and "missing" in capsys.readouterr().err
    assert cli.main(["schema"]) == 0
    assert out.read_text() == cog_schema.openapi_json("predict.py:Predictor", "train.py:train", root)
    assert cli.main(["schema", "--check"]) == 0

    (root / "train.py").write_text(textwrap.dedent(TRAIN_BASIC).replace("n: int", "n: int, m: int = 2"))
    del sys.modules["train"]  # a new process would import the edited file
    assert cli.main(["schema", "--check"]) == 1 and "out of date" in capsys.readouterr().err
    assert cli.main(["schema", "--out", "elsewhere.json"]) == 0 and (root / "elsewhere.json").is_file()
    (root / "cog.yaml").unlink()
    assert cli.main(["schema"]) == 2 and "error:" in capsys.readouterr().err


# --- A real Cog server (coglet) reads .cog/openapi_schema.json from its cwd and validates with it

SERVED = """
    from cog import BaseRunner, Input

    class Predictor(BaseRunner):
        def run(self, text: str = Input(description="Text"), n: int = Input(default=1, ge=1, le=4),
                color: str = Input(default="red", choices=["red", "blue"])) -> list[str]:
            return [f"{text}-{color}"] * n
"""

SERVED_TRAIN = """
    from cog import Input

    def train(steps: int = Input(ge=1, le=50)) -> str:
        return "x" * steps
"""


@contextlib.contextmanager
def cog_server(cwd: Path, ref: str, train: bool = False):
    """``python -m cog.server.http`` in ``cwd``, the venv's bin first on PATH (coglet spawns ``python``)."""
    port = cog_process.free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COG_TRAIN_TYPE_STUB" if train else "COG_PREDICT_TYPE_STUB": ref,
    }
    log_path = Path(tempfile.mkdtemp(prefix="cog-server-")) / f"server-{port}.log"  # not in cwd: may be the repo
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1", *(["--x-mode", "train"] if train else [])],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while _get(port, "/health-check")[1].get("status") != "READY":
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            yield port
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _request(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    """A GET, or a synchronous prediction (answered when it ends). The timeout only guards a hung server: a
    prediction (a training draws its prior images first) may take minutes on the slowest machine of this kind.
    Cog's server frees its slot a moment after answering the previous prediction and answers 409 "At capacity"
    meanwhile (as the service's workers expect): a 409 waits for its health check to say READY, then goes again."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    for _ in range(5):
        try:
            with urllib.request.urlopen(req, timeout=30 if body is None else 900) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            status, answer = e.code, json.loads(e.read())
        if body is None or status != 409:
            return status, answer
        deadline = time.monotonic() + 60
        while _request(port, "/health-check")[1].get("status") != "READY" and time.monotonic() < deadline:
            time.sleep(0.05)
    return status, answer


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        return _request(port, path)
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def test_coglet_validates_inputs_only_with_the_schema_file(project):
    root = project(**{"predict.py": SERVED})
    schema_file = cog_schema.write_schema(root, "predict.py:Predictor")
    assert schema_file == root / ".cog" / "openapi_schema.json"
    with cog_server(root, "predict.py:Predictor") as port:
        status, body = _request(port, "/predictions", {"input": {"text": "hi", "n": 2}})
        assert (status, body["status"], body["output"]) == (200, "succeeded", ["hi-red", "hi-red"])
        status, body = _request(port, "/predictions", {"input": {"text": "hi", "n": 9}})
        assert status == 422 and body["detail"] == [
            {"loc": ["body", "input", "n"], "msg": "9 is greater than the maximum of 4", "type": "value_error"}
        ]
        status, body = _request(port, "/predictions", {"input": {"color": "green"}})
        assert status == 422 and {tuple(d["loc"]) + (d["type"],) for d in body["detail"]} == {
            ("body", "input", "color", "value_error"),
            ("body", "input", "text", "value_error.missing"),
        }
        assert _request(port, "/openapi.json") == (200, json.loads(schema_file.read_text()))

    schema_file.unlink()  # the same predictor without the file: nothing is checked
    with cog_server(root, "predict.py:Predictor") as port:
        status, body = _request(port, "/predictions", {"input": {"text": "hi", "n": 9}})
        assert (status, body["status"], len(body["output"])) == (200, "succeeded", 9)
        assert _request(port, "/openapi.json")[0] == 503


def test_coglet_train_mode_validates_against_training_input(project):
    """A train-mode server validates /trainings against TrainingInput, falling back to Input when the
    document has none: a predict-only file would reject every training."""
    root = project(**{"predict.py": SERVED, "train.py": SERVED_TRAIN})
    cog_schema.write_schema(root, "predict.py:Predictor", "train.py:train")
    with cog_server(root, "train.py:train", train=True) as port:
        status, body = _request(port, "/trainings", {"input": {"steps": 3}})
        assert (status, body["status"], body["output"]) == (200, "succeeded", "xxx")
        status, body = _request(port, "/trainings", {"input": {"steps": 99}})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "input", "steps"]
    cog_schema.write_schema(root, "predict.py:Predictor")
    with cog_server(root, "train.py:train", train=True) as port:
        status, body = _request(port, "/trainings", {"input": {"steps": 3}})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "input", "text"]
