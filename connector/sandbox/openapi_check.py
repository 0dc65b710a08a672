"""Checks HTTP requests (and, optionally, responses) against HubSpot's OpenAPI 3 specs.

The sandbox runs every request the connector sends through `OpenApiChecker.check_request`, so a
request HubSpot's published contract does not allow fails loudly in tests instead of in production.

What is checked: the method and path (matched against the path templates, literal segments
winning over `{params}` as OpenAPI prescribes), path and query parameters (required, type, enum;
query parameters the operation does not declare are refused, which catches typos), and the body
(content type, JSON against its schema; multipart field names; a form-urlencoded body's fields,
each given once, as strings against its schema). Schemas are checked with `jsonschema` (Draft 7,
close enough to OpenAPI 3.0's dialect; the specs use no `nullable`), and `$ref`s resolve inside
the spec document they come from. All the specs in the directory are loaded, OAuth's
(oauth.v1.json) with the CRM's.

The specs are not part of the package: their directory is passed in (`load_checker(directory)`, the
HubSpot sandbox's `create_app(specs_dir=...)`, `connector sandbox hubspot --specs-dir`) or named by
`HUBSPOT_SPECS_DIR`. With neither, nothing is checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.jsonschema import DRAFT7

log = logging.getLogger(__name__)

SPECS_DIR_ENV = "HUBSPOT_SPECS_DIR"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
MAX_PROBLEMS = 10
MAX_MESSAGE_CHARS = 300


def specs_dir_from_env() -> Path | None:
    """The directory HUBSPOT_SPECS_DIR names, if it is set."""
    named = os.environ.get(SPECS_DIR_ENV)
    return Path(named) if named else None


@dataclass(frozen=True)
class Problem:
    location: str  # method | path | query | body
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass(frozen=True)
class Operation:
    spec: str  # the spec file's stem, e.g. "contacts"
    method: str  # upper case
    template: str  # e.g. /crm/v3/objects/contacts/{contactId}
    path_params: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"


@dataclass(frozen=True)
class RequestCheck:
    operation: Operation | None
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Template:
    spec: str
    template: str
    pattern: re.Pattern[str]
    literal_segments: int


def _escape_pointer_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _pointer(*tokens: str | int) -> str:
    return "/" + "/".join(_escape_pointer_token(str(t)) for t in tokens)


def _compile_template(template: str) -> tuple[re.Pattern[str], int]:
    parts = []
    literals = 0
    for segment in template.strip("/").split("/"):
        param = re.fullmatch(r"\{(\w+)\}", segment)
        if param:
            parts.append(f"(?P<{param.group(1)}>[^/]+)")
        else:
            parts.append(re.escape(segment))
            literals += 1
    return re.compile("/" + "/".join(parts)), literals


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 3] + "..."


class OpenApiChecker:
    """Request and response checks against a set of OpenAPI 3 documents (one per file)."""

    def __init__(self, specs: Mapping[str, dict[str, Any]]) -> None:
        self._specs = dict(specs)
        registry: Registry = Registry()
        for name, document in self._specs.items():
            registry = registry.with_resource(self._uri(name), DRAFT7.create_resource(document))
        self._registry = registry
        self._validators: dict[tuple[str, str], Draft7Validator] = {}
        self._templates = sorted(
            (
                self._template(name, path)
                for name, doc in self._specs.items()
                for path in doc.get("paths", {})
            ),
            key=lambda t: -t.literal_segments,
        )

    @classmethod
    def from_directory(cls, directory: Path) -> OpenApiChecker:
        specs = {
            path.stem.removesuffix(".v3"): json.loads(path.read_text())
            for path in sorted(directory.glob("*.json"))
        }
        if not specs:
            raise FileNotFoundError(f"no OpenAPI specs (*.json) in {directory}")
        return cls(specs)

    @staticmethod
    def _uri(spec: str) -> str:
        return f"urn:hubspot-spec:{spec}"

    @staticmethod
    def _template(spec: str, path: str) -> _Template:
        pattern, literals = _compile_template(path)
        return _Template(spec, path, pattern, literals)

    # ---- matching -------------------------------------------------------------------------

    def match(self, method: str, path: str) -> tuple[Operation | None, list[Problem]]:
        """The operation for `method path`, or why there is none."""
        if len(path) > 1:
            path = path.rstrip("/")  # HubSpot ignores a trailing slash (hubspot-api-client sends some)
        allowed: set[str] = set()
        for candidate in self._templates:
            found = candidate.pattern.fullmatch(path)
            if not found:
                continue
            path_item = self._specs[candidate.spec]["paths"][candidate.template]
            if method.lower() in path_item:
                return Operation(candidate.spec, method.upper(), candidate.template, found.groupdict()), []
            allowed.update(m.upper() for m in path_item if m in HTTP_METHODS)
        if allowed:
            return None, [
                Problem(
                    "method", f"{method.upper()} is not allowed on {path}; the spec allows {sorted(allowed)}"
                )
            ]
        return None, [Problem("path", f"no operation in the HubSpot specs matches {path}")]

    # ---- requests -------------------------------------------------------------------------

    def check_request(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]] | None = None,
        content_type: str | None = None,
        body: bytes = b"",
        form_fields: Collection[str] = (),
    ) -> RequestCheck:
        """Check one request. `query` maps each name to all its values (repeated keys);
        for multipart bodies pass the part names as `form_fields` (the body is not parsed here)."""
        operation, problems = self.match(method, path)
        if operation is None:
            return RequestCheck(None, problems)
        op_pointer = _pointer("paths", operation.template, operation.method.lower())
        op = self._specs[operation.spec]["paths"][operation.template][operation.method.lower()]
        problems += self._check_parameters(operation, op, op_pointer, query or {})
        problems += self._check_body(operation.spec, op, op_pointer, content_type, body, form_fields)
        return RequestCheck(operation, problems[:MAX_PROBLEMS])

    def _parameters(
        self, operation: Operation, op: dict[str, Any], op_pointer: str
    ) -> list[tuple[dict, str]]:
        """(parameter, pointer to its schema) for the operation's and its path item's parameters."""
        path_item = self._specs[operation.spec]["paths"][operation.template]
        item_pointer = _pointer("paths", operation.template)
        declared = [
            (p, f"{op_pointer}/parameters/{i}/schema") for i, p in enumerate(op.get("parameters", []))
        ]
        names = {p["name"] for p, _ in declared}
        declared += [
            (p, f"{item_pointer}/parameters/{i}/schema")
            for i, p in enumerate(path_item.get("parameters", []))
            if p["name"] not in names
        ]
        return declared

    def _check_parameters(
        self, operation: Operation, op: dict[str, Any], op_pointer: str, query: Mapping[str, list[str]]
    ) -> list[Problem]:
        problems: list[Problem] = []
        parameters = self._parameters(operation, op, op_pointer)
        known_query = {p["name"] for p, _ in parameters if p.get("in") == "query"}
        for name in query:
            if name not in known_query:
                problems.append(Problem("query", f"unknown query parameter {name!r}"))
        for parameter, schema_pointer in parameters:
            location = parameter.get("in")
            if location == "path":
                raw: list[str] | None = [operation.path_params[parameter["name"]]]
            elif location == "query":
                raw = query.get(parameter["name"])
            else:
                continue  # headers and cookies: auth is checked by the sandbox itself
            if not raw:
                if parameter.get("required"):
                    problems.append(Problem(location, f"required parameter {parameter['name']!r} is missing"))
                continue
            problems += self._check_parameter_value(operation.spec, parameter, schema_pointer, raw)
        return problems

    def _check_parameter_value(
        self, spec: str, parameter: dict[str, Any], schema_pointer: str, raw: list[str]
    ) -> list[Problem]:
        schema = parameter.get("schema", {})
        location, name = parameter["in"], parameter["name"]
        try:
            if schema.get("type") == "array":
                value: Any = [_convert(v, schema.get("items", {}).get("type")) for v in raw]
            else:
                if len(raw) > 1:
                    return [Problem(location, f"parameter {name!r} given {len(raw)} times")]
                value = _convert(raw[0], schema.get("type"))
        except ValueError as exc:
            return [Problem(location, f"parameter {name!r}: {exc}")]
        return [
            Problem(location, f"parameter {name!r}: {m}")
            for m in self._schema_errors(spec, schema_pointer, value)
        ]

    def _check_body(
        self,
        spec: str,
        op: dict[str, Any],
        op_pointer: str,
        content_type: str | None,
        body: bytes,
        form_fields: Collection[str],
    ) -> list[Problem]:
        request_body = op.get("requestBody")
        has_body = bool(body) or bool(form_fields)
        if request_body is None:
            return [Problem("body", "this operation takes no request body")] if has_body else []
        if not has_body:
            return [Problem("body", "a request body is required")] if request_body.get("required") else []
        media_type = (content_type or "").split(";")[0].strip().lower()
        content = request_body.get("content", {})
        if media_type not in content:
            return [
                Problem(
                    "body", f"content type {media_type or 'none'!r} not accepted; expected {sorted(content)}"
                )
            ]
        schema_pointer = f"{op_pointer}/requestBody/content/{_escape_pointer_token(media_type)}/schema"
        if media_type == "application/json":
            try:
                document = json.loads(body)
            except ValueError as exc:
                return [Problem("body", f"invalid JSON: {exc}")]
            return [Problem("body", m) for m in self._schema_errors(spec, schema_pointer, document)]
        if media_type == "multipart/form-data":
            return self._check_form_fields(content[media_type].get("schema", {}), form_fields)
        if media_type == "application/x-www-form-urlencoded":
            return self._check_urlencoded(spec, schema_pointer, body)
        return []

    def _check_urlencoded(self, spec: str, schema_pointer: str, body: bytes) -> list[Problem]:
        """A form body: each field once; the fields, as strings, against the schema."""
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            return [Problem("body", f"invalid form body: {exc}")]
        repeated = [name for name, times in Counter(name for name, _ in pairs).items() if times > 1]
        problems = [Problem("body", f"form field {name!r} given more than once") for name in repeated]
        return problems + [Problem("body", m) for m in self._schema_errors(spec, schema_pointer, dict(pairs))]

    @staticmethod
    def _check_form_fields(schema: dict[str, Any], form_fields: Collection[str]) -> list[Problem]:
        declared = set(schema.get("properties", {}))
        problems = [
            Problem("body", f"unknown form field {name!r}") for name in form_fields if name not in declared
        ]
        problems += [
            Problem("body", f"required form field {name!r} is missing")
            for name in schema.get("required", [])
            if name not in form_fields
        ]
        return problems

    # ---- responses ------------------------------------------------------------------------

    def check_response(
        self, operation: Operation, status: int, content_type: str | None, body: bytes
    ) -> list[Problem]:
        """Check a response of `operation` against the response the spec declares for `status`."""
        op = self._specs[operation.spec]["paths"][operation.template][operation.method.lower()]
        responses = op.get("responses", {})
        code = str(status) if str(status) in responses else "default"
        if code not in responses:
            return [Problem("response", f"status {status} is not declared for {operation.name}")]
        if code == "default" and 200 <= status < 300:
            return [Problem("response", f"success status {status} is not declared for {operation.name}")]
        pointer = _pointer("paths", operation.template, operation.method.lower(), "responses", code)
        response = responses[code]
        if "$ref" in response:
            pointer = response["$ref"].lstrip("#")
            response = self._resolve(operation.spec, pointer)
        content = response.get("content")
        if not content:
            return [Problem("response", "the spec declares no body for this status")] if body else []
        media_type = (content_type or "").split(";")[0].strip().lower()
        declared = media_type if media_type in content else "*/*" if "*/*" in content else None
        if declared is None:
            return [
                Problem("response", f"content type {media_type!r} not declared; expected {sorted(content)}")
            ]
        try:
            document = json.loads(body)
        except ValueError as exc:
            return [Problem("response", f"invalid JSON: {exc}")]
        schema_pointer = f"{pointer}/content/{_escape_pointer_token(declared)}/schema"
        return [Problem("response", m) for m in self._schema_errors(operation.spec, schema_pointer, document)]

    # ---- schemas --------------------------------------------------------------------------

    def _resolve(self, spec: str, pointer: str) -> Any:
        node: Any = self._specs[spec]
        for token in pointer.strip("/").split("/"):
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return node

    def _validator(self, spec: str, schema_pointer: str) -> Draft7Validator:
        key = (spec, schema_pointer)
        validator = self._validators.get(key)
        if validator is None:
            ref = f"{self._uri(spec)}#{quote(schema_pointer, safe='/~')}"
            validator = Draft7Validator({"$ref": ref}, registry=self._registry)
            self._validators[key] = validator
        return validator

    def _schema_errors(self, spec: str, schema_pointer: str, instance: Any) -> list[str]:
        errors = sorted(
            self._validator(spec, schema_pointer).iter_errors(instance), key=lambda e: list(e.path)
        )
        return [_short(_describe(error)) for error in errors[:MAX_PROBLEMS]]


def _describe(error: ValidationError) -> str:
    where = "/" + "/".join(str(p) for p in error.absolute_path) if error.absolute_path else "(root)"
    if error.context:
        # oneOf/anyOf: the whole instance failed every variant; the closest variant's error says why.
        return f"{where}: matches none of the allowed shapes; closest: {_describe(best_match(error.context))}"
    return f"{where}: {error.message}"


def _convert(raw: str, schema_type: str | None) -> Any:
    """A query or path string as the type its schema declares."""
    if schema_type == "integer":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
    if schema_type == "number":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
    if schema_type == "boolean":
        # Generated clients (hubspot-api-client among them) send Python's "True"/"False".
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ValueError(f"{raw!r} is not a boolean")
    return raw


def load_checker(directory: Path | None = None) -> OpenApiChecker | None:
    """The checker for the specs in `directory` (default: `specs_dir_from_env()`), or None, which
    turns validation off: quietly when no directory was given, with one warning when the specs are
    not in the one given."""
    directory = directory or specs_dir_from_env()
    if directory is None:
        log.info("no HubSpot OpenAPI specs given (%s unset): request validation is off", SPECS_DIR_ENV)
        return None
    try:
        return OpenApiChecker.from_directory(directory)
    except FileNotFoundError:
        log.warning("HubSpot OpenAPI specs not found in %s: request validation is off", directory)
        return None
