"""Values are normalized before they reach a batch file, so equal contacts share one row.

A value that cannot be written as one line of the `.txt` (embedded whitespace, commas,
control characters) never reaches ApexVerify: it is judged `invalid_format` locally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers

MAX_VALUE_LENGTH = 320
_UNWRITABLE = re.compile(r"[\s,;\x00-\x1f\x7f\ufeff]")


@dataclass(frozen=True)
class Normalized:
    value: str | None
    # Set when the value is unusable: "no_value" (nothing to verify) or "invalid_format".
    problem: str | None = None


def normalize_email(raw: str | None) -> Normalized:
    value = (raw or "").strip().lower()
    if not value:
        return Normalized(None, "no_value")
    if len(value) > MAX_VALUE_LENGTH or _UNWRITABLE.search(value):
        return Normalized(value[:MAX_VALUE_LENGTH], "invalid_format")
    return Normalized(value)


def normalize_phone(raw: str | None, default_region: str) -> Normalized:
    """E.164 when `phonenumbers` can parse it; otherwise the trimmed text, for ApexVerify to judge."""
    text = (raw or "").strip()
    if not text:
        return Normalized(None, "no_value")
    try:
        number = phonenumbers.parse(text, default_region.upper())
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_possible_number(number):
        return Normalized(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
    compact = re.sub(r"[\s().-]", "", text)
    if not compact or len(compact) > MAX_VALUE_LENGTH or _UNWRITABLE.search(compact):
        return Normalized(compact[:MAX_VALUE_LENGTH] or None, "invalid_format")
    return Normalized(compact)


def normalize(raw: str | None, type_: str, default_region: str) -> Normalized:
    if type_ == "email":
        return normalize_email(raw)
    return normalize_phone(raw, default_region)
