"""The JSON schemas: well formed, versioned, in step with the models, and honest about what the
parser accepts."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import refundry
from refundry.core.request import json_schema

from .conftest import BASE_REQUEST, ROOT

SCHEMAS = sorted((ROOT / "schemas").glob("*.schema.json"))
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_schema_is_valid_2020_12_with_id_and_version(path: Path):
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].startswith("https://refundry.dev/schemas/")
    assert schema["x-refundry-schema-version"] in schema["$id"]


def test_request_schema_file_is_generated_from_the_models():
    on_disk = json.loads((ROOT / "schemas" / "refund-request.schema.json").read_text())
    assert on_disk == json_schema(), (
        "regenerate: python -c \"import json, refundry.request as r; "
        "print(json.dumps(r.json_schema(), indent=2))\" > schemas/refund-request.schema.json")


def test_every_request_in_the_yaml_tests_and_examples_validates_against_the_schema():
    from refundry.app.testing import _plain, deep_merge

    schema = json.loads((ROOT / "schemas" / "refund-request.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=FORMATS)
    checked = 0
    for path in (ROOT / "rulesets").rglob("*.test.yaml"):
        suite = yaml.safe_load(path.read_text())
        defaults = (suite.get("defaults") or {}).get("request") or {}
        for case in suite["cases"]:
            request = _plain(deep_merge(defaults, case.get("request") or {}))
            validator.validate(request)
            refundry.parse_request(request)
            checked += 1
    jsonschema.validate(json.loads((ROOT / "examples/request.json").read_text()), schema,
                        format_checker=FORMATS)
    assert checked > 20


@pytest.mark.parametrize("mutation", [
    {"amount": 1.5}, {"reason": "whim"}, {"unknown": 1}, {"customer": {}},
    {"items": [{"condition": "like new"}]}, {"transaction": {"id": "x"}},
])
def test_schema_and_parser_reject_the_same_shapes(mutation):
    schema = json.loads((ROOT / "schemas" / "refund-request.schema.json").read_text())
    request = {**BASE_REQUEST, **mutation}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(request, schema, format_checker=FORMATS)
    with pytest.raises(refundry.InvalidRequest):
        refundry.parse_request(request)


def test_ruleset_schema_accepts_every_shipped_ruleset():
    schema = json.loads((ROOT / "schemas" / "ruleset.schema.json").read_text())
    from refundry.core.loader import _jsonable, discover
    from refundry.core.yamlsrc import load

    files = discover([ROOT / "rulesets"])
    assert files
    for path in files:
        jsonschema.validate(_jsonable(load(path.read_text())), schema)


def test_shipped_rulesets_point_editors_at_the_schema():
    for path in (ROOT / "rulesets").rglob("*.yaml"):
        if path.name.endswith(".test.yaml"):
            continue
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), path
        target = (path.parent / first.split("=", 1)[1]).resolve()
        assert target == (ROOT / "schemas" / "ruleset.schema.json").resolve(), path


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_no_schema_pattern_ends_with_a_bare_dollar():
    """Python's `$` also matches before a final newline, ECMA-262's does not: `$(?!\\n)` ends
    the text in both, so `1.0.0\\n` is refused by every validator."""
    for path in SCHEMAS:
        for pattern in _patterns(json.loads(path.read_text())):
            assert not pattern.endswith("$"), (path.name, pattern)
            assert "\\d" not in pattern, (path.name, pattern)  # \d takes Unicode digits in Python
    schema = json.loads((ROOT / "schemas" / "ruleset.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for version in ("1.0.0\n", "１.0.0"):
        assert any(e.validator == "pattern" for e in validator.iter_errors(
            {"ruleset": "x", "version": version, "effective_from": "2024-01-01", "rules": []}))
