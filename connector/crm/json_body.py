"""A webhook body read as JSON, or a 400 that says why."""

from __future__ import annotations

import json
from typing import Any

from connector.errors import InputError


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError("malformed_json", f"body is not valid JSON: {error}") from None
