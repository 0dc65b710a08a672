"""The ApexVerify PUT parameters a segment or sync may carry, checked before anything is sent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import phonenumbers

from connector.errors import InputError

_INT_RANGES = {
    "target_audience": (1, 23),
    "target_market_industry": (1, 115),
    "target_objective": (1, 16),
    "max_account_cache_backoff": (1, 180),
    "max_global_cache_backoff": (1, 180),
}
_BOOLEANS = {
    "use_account_cache",
    "use_global_cache",
    "remove_duplicate",
    "remove_wrong_email_format",
    "remove_wrong_phone_format",
}
TYPES = ("email", "phone")


def validate_country(country: str | None) -> str:
    code = (country or "").strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise InputError(
            "invalid_country", f"target_country must be an ISO 3166 alpha-2 code, got {country!r}"
        )
    return code


def validate_type(type_: str | None) -> str:
    if type_ not in TYPES:
        raise InputError("invalid_type", f"type must be 'email' or 'phone', got {type_!r}")
    return type_


def validate_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Known parameters with the documented types and ranges; `type`/`target_country` live on the sync."""
    clean: dict[str, Any] = {}
    for name, value in (parameters or {}).items():
        if name in ("type", "target_country"):
            continue
        if name in _INT_RANGES:
            low, high = _INT_RANGES[name]
            if value is None:
                clean[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError("invalid_parameter", f"{name} must be an integer from {low} to {high}")
        elif name in _BOOLEANS:
            if not isinstance(value, bool):
                raise InputError("invalid_parameter", f"{name} must be true or false")
        else:
            raise InputError("invalid_parameter", f"unknown ApexVerify parameter {name!r}")
        clean[name] = value
    return clean


def parse_cli_parameter(text: str) -> tuple[str, Any]:
    """`key=value` from the command line: integers and true/false become their types."""
    if "=" not in text:
        raise InputError("invalid_parameter", f"--param takes key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("null", "none"):
        return key, None
    try:
        return key, int(raw)
    except ValueError:
        return key, raw
