"""The OpenAPI schema of our Cog predictors, written as Cog's Go ``cog build`` writes it.

Cog's HTTP server (coglet) validates inputs only when ``.cog/openapi_schema.json`` exists in its
working directory; the Go CLI writes that file at build time, and we build without Docker or Go.
This module ports the Go generator (``pkg/schema/openapi_spec.go``, ``generator.go``, ``types.go``
and ``schema_type.go`` of github.com/replicate/cog) on top of the installed Python SDK's inspector
(``cog._inspector``), which describes a predictor the way coglet's worker sees it.

Faithful to Go: component and path names, titles, ``x-order``, enum components for ``choices``,
required/nullable/default rules (incl. the ``Secret = Input(default=None)`` exception), OpenAPI 3.0
post-processing, the predict+train merge, and the bytes: compact JSON for one mode, two-space
indented JSON with sorted keys for a combined document, Go's number formatting and HTML escaping.

Differences, on purpose: values are read at runtime, so ``choices=list(REGISTRY)`` or
``le=MAX_SEED`` resolve (Go's static parser rejects the first and drops the second). Output types
the SDK's inspector cannot describe the way Go does (``dict[K, V]``, ``TypedDict``, custom coders)
raise ``ValueError`` instead of producing a different schema.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import importlib.util
import inspect
import json
import math
import os
import re
import sys
import tempfile
import textwrap
import typing
import warnings
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields, is_dataclass
from decimal import Decimal
from enum import Enum
from pathlib import Path, PurePath
from types import ModuleType
from typing import Any, Literal

import cog
from cog import _adt as adt, _inspector
from cog.input import FieldInfo
from cog.types import Secret

Mode = Literal["predict", "train"]

SCHEMA_PATH = Path(".cog") / "openapi_schema.json"  # where coglet's worker reads it, relative to its cwd
COG_VERSION = importlib.metadata.version("cog")  # Go writes the CLI's version; ours is the SDK that serves


class _Ordered(dict):
    """A JSON object written in insertion order (Go's ``orderedMapAny``); a plain dict is a Go
    ``map``, which ``encoding/json`` writes with sorted keys."""


@dataclass(frozen=True)
class InputSpec:
    """One input: what the SDK's inspector found, plus the two facts it drops."""

    field: adt.InputField
    default_given: bool  # Go tells `x: T = Input()` (no default) from `Input(default=None)`; the SDK does not
    accept: str | None  # Input(accept=...) reaches FieldInfo but not adt.InputField


@dataclass(frozen=True)
class RunnerInfo:
    """Go's ``schema.PredictorInfo``: what the OpenAPI document is built from."""

    mode: Mode
    inputs: tuple[InputSpec, ...]
    output: dict[str, Any]  # Go's SchemaType.JSONSchema(): the Output component
    supports_streaming: bool


# ---------------------------------------------------------------------------------------------
# Reading a predictor (Go: GenerateInfo + the tree-sitter parser; here: the SDK's inspector)
# ---------------------------------------------------------------------------------------------


def predictor_info(ref: str, mode: Mode = "predict", root: Path | str | None = None) -> RunnerInfo:
    """Describe the predictor ``ref`` (``file.py:Name``, relative to the project ``root``).

    Predict mode takes a class's ``run()`` (or legacy ``predict()``); train mode a class's
    ``train()``, as both Go and coglet do. A function target is used as it is.
    """
    if mode not in ("predict", "train"):
        raise ValueError(f"mode must be 'predict' or 'train', not {mode!r}")
    root = Path(root or Path.cwd()).resolve()
    path, name = _parse_ref(ref)
    module = _import_file(root, path)
    target = getattr(module, name, None)
    if target is None:
        raise ValueError(f"{ref}: {path} defines no {name}")
    fn, fn_name, is_method = _target_function(ref, target, name, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # BasePredictor / predict() deprecations
        _inspector._find_coders(module)
        info = _inspector._create_predictor_info(module.__name__, name, fn, fn_name, is_method)
    syntax = _FunctionSyntax.of(fn)
    raw_defaults = _raw_defaults(fn, is_method)
    inputs = tuple(
        _input_spec(field, raw, syntax) for field, raw in zip(info.inputs.values(), raw_defaults, strict=True)
    )
    try:
        return_type = typing.get_type_hints(fn, include_extras=True).get("return")
    except Exception:  # noqa: BLE001 - the SDK falls back to the raw annotations too, whatever failed
        return_type = fn.__annotations__.get("return")
    streaming = syntax.decorated_with(cog.streaming)
    if streaming and info.output.kind not in (adt.OutputKind.ITERATOR, adt.OutputKind.CONCAT_ITERATOR):
        raise ValueError(
            f"{ref}: @streaming requires Iterator[...], AsyncIterator[...], ConcatenateIterator[...] "
            "or AsyncConcatenateIterator[...] return type"
        )
    return RunnerInfo(
        mode=mode, inputs=inputs, output=_output_schema(info.output, return_type), supports_streaming=streaming
    )


def _parse_ref(ref: str) -> tuple[str, str]:
    """Go's parsePredictRef + cleanSourceFilePath: ``path.py:Name`` inside the project."""
    path, sep, name = ref.partition(":")
    if not sep or not path or not name:
        raise ValueError(f"invalid predictor reference {ref!r}: expected 'file.py:Name'")
    clean = os.path.normpath(path)
    if os.path.isabs(clean) or clean == ".." or clean.startswith(".." + os.sep):
        raise ValueError(f"predictor source path {path!r} is outside the project directory")
    return clean, name


def _import_file(root: Path, path: str) -> ModuleType:
    """Import ``root/path`` under its file stem, as coglet's ``load_predictor_from_ref`` does."""
    file = (root / path).resolve()
    if not file.is_file():
        raise ValueError(f"failed to read predictor source {file}")
    name = file.stem
    loaded = sys.modules.get(name)
    loaded_file = getattr(loaded, "__file__", None)
    if loaded is not None and loaded_file and Path(loaded_file).resolve() == file:
        return loaded  # already imported (e.g. by tests): re-executing would fork its classes
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))  # the predictor imports project modules, as in coglet's cwd
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            sys.path.remove(str(root))
    return module


def _target_function(ref: str, target: Any, name: str, mode: Mode) -> tuple[Callable[..., Any], str, bool]:
    """The callable whose signature is the interface: (function, its name, is it a method)."""
    if inspect.isfunction(target):
        return _inspector._unwrap(target), name, False
    if not inspect.isclass(target):
        raise ValueError(f"{ref}: {name} is neither a class nor a function")
    if mode == "predict":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            fn_name, fn = _inspector._selected_predict_method(target, ref)
        return _inspector._unwrap(fn), fn_name, True
    train = getattr(target, "train", None)
    if not inspect.isfunction(train):
        raise ValueError(
            f"{ref}: {name} has no train() method. Cog's train mode (`cog train`, POST /trainings) "
            f"calls {name}.train(), and Go's schema generator fails the same way "
            f"('{name}.train not found'); run() is only used for predictions"
        )
    return _inspector._unwrap(train), "train", True


def _raw_defaults(fn: Callable[..., Any], is_method: bool) -> list[Any]:
    """Each parameter's default as written (a FieldInfo, a plain value or ``Parameter.empty``)."""
    params = list(inspect.signature(fn).parameters.values())
    return [p.default for p in params[1 if is_method else 0 :]]


@dataclass(frozen=True)
class _FunctionSyntax:
    """What only the source says: which ``Input(...)`` calls spell no default, and the decorators."""

    inputs_without_default: frozenset[str] | None  # None: source unavailable
    decorators: tuple[ast.expr, ...]
    globals: dict[str, Any]

    @classmethod
    def of(cls, fn: Callable[..., Any]) -> _FunctionSyntax:
        try:
            node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
        except (OSError, TypeError, SyntaxError, IndexError):
            return cls(None, (), fn.__globals__)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return cls(None, (), fn.__globals__)
        positional = node.args.posonlyargs + node.args.args
        with_defaults = positional[len(positional) - len(node.args.defaults) :]
        names = frozenset(
            arg.arg
            for arg, default in zip(with_defaults, node.args.defaults, strict=True)
            if isinstance(default, ast.Call)
            and _is_input_call(default)
            and not default.args
            and not any(k.arg == "default" for k in default.keywords)
        )
        return cls(names, tuple(node.decorator_list), fn.__globals__)

    def decorated_with(self, decorator: Any) -> bool:
        """Go's functionSupportsStreaming, resolved at runtime instead of through the imports."""
        return any(
            _resolve(d.func if isinstance(d, ast.Call) else d, self.globals) is decorator for d in self.decorators
        )


def _is_input_call(node: ast.expr) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return (isinstance(func, ast.Name) and func.id == "Input") or (
        isinstance(func, ast.Attribute) and func.attr == "Input"
    )


def _resolve(node: ast.expr, namespace: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(node.value, namespace), node.attr, None)
    return None


def _input_spec(field: adt.InputField, raw: Any, syntax: _FunctionSyntax) -> InputSpec:
    if raw is inspect.Parameter.empty:
        given = False
    elif not isinstance(raw, FieldInfo) or raw.default is not None:
        given = True
    else:  # Input(default=None) vs Input(...) without a default: only the source tells
        given = syntax.inputs_without_default is not None and field.name not in syntax.inputs_without_default
    accept = raw.accept if isinstance(raw, FieldInfo) else None
    if accept is not None and field.type.primitive not in (adt.PrimitiveType.PATH, adt.PrimitiveType.FILE):
        raise ValueError(f"accept is only valid on Path or File inputs (parameter '{field.name}')")
    return InputSpec(field=field, default_given=given, accept=accept)


# ---------------------------------------------------------------------------------------------
# JSON Schema fragments (Go: PrimitiveType.JSONType, inputTypeJSONSchema, SchemaType.JSONSchema)
# ---------------------------------------------------------------------------------------------

_PRIMITIVES: dict[adt.PrimitiveType, dict[str, Any]] = {
    adt.PrimitiveType.BOOL: {"type": "boolean"},
    adt.PrimitiveType.FLOAT: {"type": "number"},
    adt.PrimitiveType.INTEGER: {"type": "integer"},
    adt.PrimitiveType.STRING: {"type": "string"},
    adt.PrimitiveType.PATH: {"type": "string", "format": "uri"},
    adt.PrimitiveType.FILE: {"type": "string", "format": "uri"},
    adt.PrimitiveType.SECRET: {"type": "string", "format": "password", "writeOnly": True, "x-cog-secret": True},
    adt.PrimitiveType.ANY: {"type": "object"},
}
_OPTIONAL = (adt.Repetition.OPTIONAL, adt.Repetition.OPTIONAL_REPEATED)
_LISTS = (adt.Repetition.REPEATED, adt.Repetition.OPTIONAL_REPEATED)


def _primitive_schema(primitive: Any) -> dict[str, Any]:
    if primitive is _inspector._any_type:  # `-> Any`: Go's SchemaAnyType
        return {"type": "object"}
    if primitive not in _PRIMITIVES:
        raise ValueError("custom coder types are not supported by Cog's static schema generator")
    return dict(_PRIMITIVES[primitive])


def _input_type_schema(ft: adt.FieldType) -> dict[str, Any]:
    """Go's inputTypeJSONSchema: a union's variants each carry the union's ``nullable``."""
    nullable = ft.repetition in _OPTIONAL
    if ft.union_variants is not None:
        variants = [_input_type_schema(v) | ({"nullable": True} if nullable else {}) for v in ft.union_variants]
        schema: dict[str, Any] = {"anyOf": variants}
    elif ft.repetition in _LISTS:
        schema = {"type": "array", "items": _primitive_schema(ft.primitive)}
    else:
        schema = _primitive_schema(ft.primitive)
    if nullable:
        schema["nullable"] = True
    return schema


def _output_schema(output: adt.OutputType, annotation: Any) -> dict[str, Any]:
    """Go's SchemaType.JSONSchema() for the shapes the SDK's OutputType can express."""
    _reject_typed_dicts(annotation)
    if output.kind is adt.OutputKind.OBJECT:
        schema = _object_schema(output.fields or {}, _fields_with_defaults(annotation))
    elif output.kind is adt.OutputKind.SINGLE:
        schema = _primitive_schema(output.type)
    else:  # list, Iterator, ConcatenateIterator
        schema = {"type": "array", "items": _primitive_schema(output.type)}
        if output.kind is not adt.OutputKind.LIST:
            schema["x-cog-array-type"] = "iterator"
        if output.kind is adt.OutputKind.CONCAT_ITERATOR:
            schema["x-cog-array-display"] = "concatenate"
    schema["title"] = "Output"
    return schema


def _object_schema(model_fields: dict[str, adt.FieldType], defaulted: set[str]) -> dict[str, Any]:
    """A BaseModel output: properties in declaration order, optional fields nullable."""
    properties = _Ordered()
    required = []
    for name, ft in model_fields.items():
        if ft.union_variants is not None:
            raise ValueError(f"output field {name!r}: union types are not supported as output")
        prop = _input_type_schema(ft)
        prop["title"] = title_case(name)
        properties[name] = prop
        if ft.repetition not in _OPTIONAL and name not in defaulted:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _fields_with_defaults(model: Any) -> set[str]:
    """Fields of a BaseModel (a dataclass) or pydantic model that have defaults: Go does not require them."""
    if is_dataclass(model):
        return {f.name for f in fields(model) if f.default is not MISSING or f.default_factory is not MISSING}
    model_fields = getattr(model, "model_fields", None)
    if isinstance(model_fields, dict):
        return {name for name, f in model_fields.items() if not f.is_required()}
    return set()


def _reject_typed_dicts(tpe: Any, models: bool = True) -> None:
    """Go types ``dict[K, V]`` / ``TypedDict`` outputs precisely; the SDK sees an opaque object.
    ``models``: also look into the fields of a BaseModel (the output itself, not nested ones)."""
    _, opaque = adt._unwrap_opaque(tpe)
    if opaque:
        return
    origin = typing.get_origin(tpe)
    if typing.is_typeddict(tpe) or (origin is dict and typing.get_args(tpe)):
        raise ValueError(
            f"output type {tpe!r}: typed dict outputs (dict[K, V], TypedDict) are not ported; "
            "use a BaseModel, a bare dict or Annotated[..., cog.Opaque]"
        )
    for arg in typing.get_args(tpe):
        _reject_typed_dicts(arg, models=False)
    if models and inspect.isclass(tpe) and (is_dataclass(tpe) or hasattr(tpe, "model_fields")):
        for hint in typing.get_type_hints(tpe, include_extras=True).values():
            _reject_typed_dicts(hint, models=False)


def title_case(name: str) -> str:
    """Go's TitleCase: ``num_outputs`` -> ``Num Outputs`` (ASCII first letters only)."""
    return " ".join(p[:1].upper() + p[1:] if p[:1].isascii() else p for p in name.split("_"))


# ---------------------------------------------------------------------------------------------
# The OpenAPI document (Go: buildOpenAPISpec, buildInputSchema, post-processing, MergeSchemas)
# ---------------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    """A default or choice as Go's DefaultValue.ToJSON writes the literal."""
    if isinstance(value, Secret):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return _json_value(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def _input_property(spec: InputSpec) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """One Input property, its enum component (for ``choices``) and whether it is required."""
    field, ft = spec.field, spec.field.type
    prop: dict[str, Any] = {"x-order": field.order}
    enum = None
    if field.choices:  # allOf + $ref to a component named after the parameter, as Go does
        enum_type = _PRIMITIVES.get(ft.primitive, {}).get("type") or "string"
        enum = {
            "title": field.name,
            "description": "An enumeration.",
            "enum": [_json_value(c) for c in field.choices],
            "type": enum_type,
        }
        prop["allOf"] = [{"$ref": f"#/components/schemas/{field.name}"}]
    else:
        prop["title"] = title_case(field.name)
        prop.update(_input_type_schema(ft))

    # default=None on a non-nullable input means "none; made at run time" (a random seed), so it is
    # required and has no default; except a bare Secret, where it means "no credential" (Go's rule).
    nullable = ft.repetition in _OPTIONAL
    if (
        ft.primitive is adt.PrimitiveType.SECRET
        and ft.repetition is adt.Repetition.REQUIRED
        and spec.default_given
        and field.default is None
    ):
        nullable = True
    has_default = spec.default_given and not (field.default is None and not nullable)
    required = not has_default and (
        ft.union_variants is not None or ft.repetition in (adt.Repetition.REQUIRED, adt.Repetition.REPEATED)
    )
    if has_default:
        prop["default"] = _json_value(field.default)
    if nullable:
        prop["nullable"] = True
    for key, value in (
        ("description", field.description),
        ("minimum", field.ge),
        ("maximum", field.le),
        ("minLength", field.min_length),
        ("maxLength", field.max_length),
        ("pattern", field.regex),
        ("x-cog-accept", spec.accept),
    ):
        if value is not None:
            prop[key] = value
    if field.deprecated:
        prop["deprecated"] = True
    return prop, enum, required


def _input_schema(info: RunnerInfo) -> tuple[dict[str, Any], _Ordered]:
    """Go's buildInputSchema: the Input object and the enum components of its ``choices``."""
    properties, enums, required = _Ordered(), _Ordered(), []
    for spec in info.inputs:
        prop, enum, is_required = _input_property(spec)
        properties[spec.field.name] = prop
        if enum is not None:
            enums[spec.field.name] = enum
        if is_required:
            required.append(spec.field.name)
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _ok(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": "Successful Response", "content": {"application/json": {"schema": schema or {}}}}


def _validation_error() -> dict[str, Any]:
    return {
        "description": "Validation Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
    }


def _fixed_components() -> _Ordered:
    """Status and the validation error schemas, the same in every document."""
    return _Ordered(
        {
            "Status": {
                "title": "Status",
                "description": "An enumeration.",
                "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
                "type": "string",
            },
            "HTTPValidationError": {
                "title": "HTTPValidationError",
                "type": "object",
                "properties": {
                    "detail": {
                        "title": "Detail",
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/ValidationError"},
                    }
                },
            },
            "ValidationError": {
                "title": "ValidationError",
                "required": ["loc", "msg", "type"],
                "type": "object",
                "properties": {
                    "loc": {
                        "title": "Location",
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"title": "Message", "type": "string"},
                    "type": {"title": "Error Type", "type": "string"},
                },
            },
        }
    )


def _response_properties(input_ref: str, output_ref: str) -> dict[str, Any]:
    timestamp = {"type": "string", "format": "date-time"}
    return {
        "input": {"$ref": input_ref},
        "output": {"$ref": output_ref},
        "id": {"title": "Id", "type": "string"},
        "version": {"title": "Version", "type": "string"},
        "created_at": {"title": "Created At", **timestamp},
        "started_at": {"title": "Started At", **timestamp},
        "completed_at": {"title": "Completed At", **timestamp},
        "status": {"title": "Status", "type": "string"},
        "error": {"title": "Error", "type": "string"},
        "logs": {"title": "Logs", "type": "string"},
        "metrics": {"title": "Metrics", "type": "object"},
    }


def build_spec(info: RunnerInfo) -> dict[str, Any]:
    """Go's GenerateOpenAPISchema for one mode, as a dict in Go's key order."""
    train = info.mode == "train"
    noun, verb, key = ("training", "Train", "Training") if train else ("prediction", "Predict", "Prediction")
    input_key, output_key = ("TrainingInput", "TrainingOutput") if train else ("Input", "Output")
    input_ref, output_ref = f"#/components/schemas/{input_key}", f"#/components/schemas/{output_key}"

    input_schema, enums = _input_schema(info)
    input_schema["title"] = input_key
    components = _Ordered({input_key: input_schema, output_key: copy.deepcopy(info.output)})
    components.update(enums)  # a choices input named like a fixed component is overwritten below, as in Go
    components[f"{key}Request"] = {
        "title": f"{key}Request",
        "type": "object",
        "properties": {"id": {"title": "Id", "type": "string"}, "input": {"$ref": input_ref}},
    }
    components[f"{key}Response"] = {
        "title": f"{key}Response",
        "type": "object",
        "properties": _response_properties(input_ref, output_ref),
    }
    components.update(_fixed_components())

    operation: dict[str, Any] = {
        "summary": verb,
        "description": f"Run a single {noun} on the model",
        "operationId": f"{verb.lower()}_{noun}s_post",
        "requestBody": {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{key}Request"}}}},
        "responses": {"200": _ok({"$ref": f"#/components/schemas/{key}Response"}), "422": _validation_error()},
    }
    if not train and info.supports_streaming:
        operation["x-cog-streaming"] = True
    cancel_param = f"{noun}_id"
    paths = _Ordered(
        {
            "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": {"200": _ok()}}},
            "/health-check": {
                "get": {
                    "summary": "Healthcheck",
                    "operationId": "healthcheck_health_check_get",
                    "responses": {"200": _ok()},
                }
            },
            f"/{noun}s": {"post": operation},
            f"/{noun}s/{{{cancel_param}}}/cancel": {
                "post": {
                    "summary": "Cancel",
                    "operationId": f"cancel_{noun}s__{cancel_param}__cancel_post",
                    "parameters": [
                        {
                            "required": True,
                            "schema": {"title": title_case(cancel_param), "type": "string"},
                            "name": cancel_param,
                            "in": "path",
                        }
                    ],
                    "responses": {"200": _ok(), "422": _validation_error()},
                }
            },
        }
    )
    spec = {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": COG_VERSION},
        "paths": paths,
        "components": {"schemas": components},
    }
    _remove_title_next_to_ref(spec)
    _fix_nullable_any_of(spec)
    return _go_key_order(spec, sort_all=False)


def _remove_title_next_to_ref(value: Any) -> None:
    """OpenAPI 3.0 allows no sibling keywords next to ``$ref`` (Go's removeTitleNextToRef)."""
    if isinstance(value, dict):
        if "$ref" in value:
            value.pop("title", None)
        for child in value.values():
            _remove_title_next_to_ref(child)
    elif isinstance(value, list):
        for child in value:
            _remove_title_next_to_ref(child)


def _fix_nullable_any_of(value: Any) -> None:
    """``anyOf: [T, {type: null}]`` -> ``T`` + ``nullable: true``, as OpenAPI 3.0 spells it."""
    if isinstance(value, list):
        for child in value:
            _fix_nullable_any_of(child)
        return
    if not isinstance(value, dict):
        return
    for child in value.values():
        _fix_nullable_any_of(child)
    variants = value.get("anyOf")
    if not isinstance(variants, list) or len(variants) != 2 or not all(isinstance(v, dict) for v in variants):
        return
    non_null = [v for v in variants if v.get("type") != "null"]
    if len(non_null) == 1:
        del value["anyOf"]
        value.update(sorted(non_null[0].items()))
        value["nullable"] = True


def merge_schemas(predict: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Go's MergeSchemas: the predict document plus the train paths and components it lacks."""
    for path, item in train["paths"].items():
        predict["paths"].setdefault(path, item)
    for name, schema in train["components"]["schemas"].items():
        predict["components"]["schemas"].setdefault(name, schema)
    return predict


def _documents(predict_ref: str | None, train_ref: str | None, root: Path | str | None) -> list[dict[str, Any]]:
    if not predict_ref and not train_ref:
        raise ValueError("no predict or train reference found in cog.yaml")
    refs: tuple[tuple[str | None, Mode], ...] = ((predict_ref, "predict"), (train_ref, "train"))
    return [build_spec(predictor_info(ref, mode, root)) for ref, mode in refs if ref]


def openapi_schema(
    predict_ref: str | None, train_ref: str | None = None, root: Path | str | None = None
) -> dict[str, Any]:
    """Go's GenerateCombined, as a dict in the key order of the JSON Go writes."""
    docs = _documents(predict_ref, train_ref, root)
    if len(docs) == 1:
        return docs[0]
    return _go_key_order(merge_schemas(*docs), sort_all=True)


def openapi_json(predict_ref: str | None, train_ref: str | None = None, root: Path | str | None = None) -> str:
    """The exact text ``cog build`` writes: compact for one mode, indented when predict and train merge."""
    combined = bool(predict_ref and train_ref)
    return go_json(openapi_schema(predict_ref, train_ref, root), indent=combined, float64=combined)


def write_schema(
    root: Path | str, predict_ref: str | None, train_ref: str | None = None, out: Path | str | None = None
) -> Path:
    """Write the schema where coglet reads it (``<root>/.cog/openapi_schema.json``), atomically as Go does."""
    root = Path(root)
    out = Path(out) if out is not None else root / SCHEMA_PATH
    text = openapi_json(predict_ref, train_ref, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return out


CONFIGS = ("cog.yaml", "cog-train.yaml")  # the generation model, the training model


def schema_file(root: Path | str, config: str = "cog.yaml") -> Path:
    """Where the schema of ``config``'s model lives: ``.cog/openapi_schema.json`` for cog.yaml (where ``cog build``
    and coglet put it), ``.cog/openapi_schema-<config stem>.json`` for the others (a worker for that model runs
    in a folder holding a copy as its own ``.cog/openapi_schema.json``)."""
    stem = Path(config).stem
    return Path(root) / (SCHEMA_PATH if config == "cog.yaml" else SCHEMA_PATH.with_name(f"openapi_schema-{stem}.json"))


def cog_yaml_refs(root: Path | str, config: str = "cog.yaml") -> tuple[str | None, str | None]:
    """The top-level ``predict:`` and ``train:`` of ``<root>/<config>``."""
    import yaml  # PyYAML: a dependency of cog itself

    path = Path(root) / config
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    loaded = yaml.safe_load(path.read_text()) or {}
    refs = tuple(loaded.get(key) or None for key in ("predict", "train"))
    if not any(refs):
        raise ValueError(f"{path}: no predict or train reference")
    return refs  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# JSON as Go's encoding/json writes it
# ---------------------------------------------------------------------------------------------


def _go_key_order(value: Any, sort_all: bool) -> Any:
    """Plain dicts in the order Go writes them: maps sorted, ordered maps as built; ``sort_all``
    for a merged document, which Go unmarshals into plain maps before writing."""
    if isinstance(value, dict):
        keep = isinstance(value, _Ordered) and not sort_all
        items = value.items() if keep else sorted(value.items())
        return {k: _go_key_order(v, sort_all) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_go_key_order(v, sort_all) for v in value]
    return value


_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _go_string(s: str) -> str:
    return re.sub("[<>&\u2028\u2029]", lambda m: _HTML_ESCAPES[m.group()], json.dumps(s, ensure_ascii=False))


def _go_float(f: float) -> str:
    """strconv's shortest form, 'f' for 1e-6 <= |f| < 1e21 and 'e' outside (``1e-7``, ``1e+21``)."""
    if not math.isfinite(f):
        raise ValueError(f"unsupported number in schema: {f}")
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    if abs(f) < 1e-6 or abs(f) >= 1e21:  # repr's shortest digits, written like Go's 'e': 1e-07 -> 1e-7
        return re.sub(r"e-0(\d)$", r"e-\1", repr(f))
    text = format(Decimal(repr(f)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def go_json(value: Any, indent: bool = False, float64: bool = False, _level: int = 0) -> str:
    """``json.Marshal`` (or ``MarshalIndent(v, "", "  ")``) of ``value``, keys in the dicts' order.

    ``float64``: every number as a float64, as after Go's round trip through ``map[string]any``.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return _go_float(float(value)) if float64 else str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, dict):
        parts = [
            f"{_go_string(str(k))}:{' ' if indent else ''}{go_json(v, indent, float64, _level + 1)}"
            for k, v in value.items()
        ]
        return _join(parts, "{", "}", indent, _level)
    if isinstance(value, (list, tuple)):
        return _join([go_json(v, indent, float64, _level + 1) for v in value], "[", "]", indent, _level)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _join(parts: list[str], open_: str, close: str, indent: bool, level: int) -> str:
    if not parts:
        return open_ + close
    if not indent:
        return open_ + ",".join(parts) + close
    inner, outer = "\n" + "  " * (level + 1), "\n" + "  " * level
    return open_ + inner + ("," + inner).join(parts) + outer + close
