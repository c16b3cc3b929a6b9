"""pydantic JSON Schema -> Kubernetes structural OpenAPI v3 schema.

pydantic emits JSON Schema 2020-12 with ``$defs``/``$ref``, ``anyOf`` for optionals and numeric
``exclusiveMinimum``; the API server wants a structural schema (OpenAPI v3.0 subset): every node typed and
inlined, no ``$ref``, ``nullable`` instead of null branches, boolean exclusive bounds, no ``additionalProperties:
false`` next to ``properties``. The conversion refuses anything it cannot express rather than guess.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

JsonSchema = dict[str, Any]

# JSON Schema keys that have no place in a CRD schema.
_DROP = {"title", "discriminator", "$schema", "examples"}
# Keys a structural schema node may carry.
_ALLOWED = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "default",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "nullable",
    "anyOf",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
}


class SchemaError(ValueError):
    """The model uses a construct that has no structural-schema equivalent."""


def structural(model: type[BaseModel]) -> JsonSchema:
    """The structural schema of a pydantic model (validation mode, wire names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs, model.__name__)


def _merge(base: JsonSchema, over: JsonSchema) -> JsonSchema:
    """``over`` wins, except that CEL rules of both are kept."""
    merged = {**base, **over}
    rules = [*base.get("x-kubernetes-validations", []), *over.get("x-kubernetes-validations", [])]
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _resolve(node: JsonSchema, defs: dict[str, JsonSchema], path: str) -> JsonSchema:
    """Inline ``$ref`` (and single-element ``allOf``), keeping sibling keys: a field's description wins."""
    node = dict(node)
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        node = _merge(_resolve(inner, defs, path), node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        if name not in defs:
            raise SchemaError(f"{path}: unknown $ref {name}")
        node = _merge(_resolve(copy.deepcopy(defs[name]), defs, path), node)
    return node


def _convert(node: JsonSchema, defs: dict[str, JsonSchema], path: str) -> JsonSchema:
    node = _resolve(node, defs, path)
    if "anyOf" in node:
        node = _collapse_any_of(node, defs, path)
    out: JsonSchema = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "default" and value is None:
            continue  # "unset" is the absence of the field
        elif key == "additionalProperties" and value is False:
            continue  # implied by properties in a structural schema; unknown fields are pruned or refused
        elif key == "properties":
            out["properties"] = {k: _convert(v, defs, f"{path}.{k}") for k, v in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            out["additionalProperties"] = _convert(value, defs, f"{path}{{}}")
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "anyOf":
            out["anyOf"] = value  # only int-or-string survives _collapse_any_of
        elif key in _ALLOWED:
            out[key] = value
        else:
            raise SchemaError(f"{path}: unsupported schema key {key!r}")
    if "default" in out and not isinstance(out["default"], dict | list) and "description" in out:
        # `kubectl explain` does not print defaults; say it in the description.
        shown = str(out["default"]).lower() if isinstance(out["default"], bool) else out["default"]
        out["description"] = f"{out['description'].rstrip()} Default: {shown}."
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path}: no type (structural schemas need one on every node)")
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        raise SchemaError(f"{path}: object without properties or additionalProperties")
    return _ordered(out)


# Readable YAML: what a node is first, then its bounds, then its children and rules.
_ORDER = [
    "description",
    "type",
    "format",
    "enum",
    "default",
    "nullable",
    "anyOf",
    "x-kubernetes-int-or-string",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "properties",
    "additionalProperties",
    "items",
]


def _ordered(node: JsonSchema) -> JsonSchema:
    rank = {k: i for i, k in enumerate(_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(_ORDER)), kv[0])))


def _collapse_any_of(node: JsonSchema, defs: dict[str, JsonSchema], path: str) -> JsonSchema:
    branches = [_resolve(b, defs, path) for b in node["anyOf"]]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    non_null = [b for b in branches if b.get("type") != "null"]
    types = sorted(str(b.get("type")) for b in non_null)
    if len(non_null) == 1:
        # Optional[T]: an absent field means unset, so the null branch is dropped rather than made nullable.
        merged = _merge(non_null[0], rest)
        if "anyOf" in merged:
            return _collapse_any_of(merged, defs, path)
        return merged
    if types == ["integer", "string"]:
        string_branch = next(b for b in non_null if b.get("type") == "string")
        merged = {
            **rest,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        }
        for key in ("pattern", "minLength", "maxLength"):  # they apply to the string form only
            if key in string_branch:
                merged[key] = string_branch[key]
        return merged
    raise SchemaError(f"{path}: unions other than Optional[T] and int|str cannot be expressed ({types})")


def walk(node: JsonSchema, path: str = "") -> list[tuple[str, JsonSchema]]:
    """Every node of a converted schema with its dotted path (for checks and docs)."""
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += walk(child, f"{path}.{name}" if path else name)
    if "items" in node:
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found
