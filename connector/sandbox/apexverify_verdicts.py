"""Deterministic verdict rules of the ApexVerify sandbox: the same value always gets the same result.

Emails (matched case-insensitively; the first rule that applies decides the outcome):

====================================================  =====  =====  =======  =======  =======
rule                                                  valid  wrong  unknown  quality  result
====================================================  =====  =====  =======  =======  =======
malformed: not exactly one "@", whitespace or a        no     yes    no       bad      invalid
comma, empty local part, domain without a dot or
with an empty label  (``is_syntax_error``)
local part starts with bounce / invalid / nobody, or   no     yes    no       bad      invalid
domain is invalid.example or ends with .invalid
disposable domain (mailinator.com, yopmail.com, ...)   no     no     yes      bad      ok
catch-all domain (starts with "catchall", or           no     no     yes      risky    unknown
acceptall.example)
local part starts with "error" (SMTP error)            no     no     yes      unknown  error
local part starts with "unknown"                       no     no     yes      unknown  unknown
role local part (info, admin, support, sales, ...)     yes    no     no       risky    ok
anything else                                          yes    no     no       good     ok
====================================================  =====  =====  =======  =======  =======

A disposable inbox accepts mail (result ok) but is not safe to contact, nor provably invalid: we
call it unknown with quality bad. The flags ``is_free``, ``is_role``, ``is_disposable`` and
``is_catch_all`` describe the address whatever the outcome (all false for a malformed address).

Phones are parsed with ``phonenumbers``, the batch's target country as default region. A value
that does not parse or is not a valid number is malformed: type ``bad_format``, status
``not_applicable``, wrong. Otherwise ``type`` comes from the number type and ``status`` from the
trailing digits:

=================  ===========================  ==============
number ends with   status                       verdict
=================  ===========================  ==============
...81              absent_subscriber            unknown
...82              no_teleservice_provisioned   wrong
...83              not_available_network_only   unknown
...84              no_coverage                  unknown
...0               dead                         wrong
...9               inconclusive                 unknown
anything else      live                         valid
=================  ===========================  ==============

A number whose second-to-last digit is 7 is ported. Mobile numbers that are not dead get the
network (MCC, MNC, operator) of a small per-country table, or nulls for other countries.

Caches: ``is_global_cache_hit`` picks a fixed ~10% of values from a hash of the value.
"""

from __future__ import annotations

import hashlib

import phonenumbers
from phonenumbers import PhoneNumberType

# phonenumbers knows every ISO 3166-1 alpha-2 country with a phone plan, plus three regions that
# are not ISO codes; the uninhabited ISO territories have no phone plan, so they are added back.
_NOT_ISO = {"AC", "TA", "XK"}
_ISO_WITHOUT_PHONE_PLAN = {"AQ", "BV", "GS", "HM", "PN", "TF", "UM"}
ISO_COUNTRIES = frozenset((set(phonenumbers.SUPPORTED_REGIONS) - _NOT_ISO) | _ISO_WITHOUT_PHONE_PLAN)

ROLE_LOCAL_PARTS = frozenset(
    {
        "admin", "billing", "contact", "help", "hello", "info", "jobs", "marketing", "noreply",
        "no-reply", "office", "postmaster", "sales", "support", "team", "webmaster",
    }
)  # fmt: skip
DISPOSABLE_DOMAINS = frozenset(
    {
        "mailinator.com", "guerrillamail.com", "10minutemail.com", "tempmail.com", "yopmail.com",
        "trashmail.com", "sharklasers.com", "throwawaymail.com",
    }
)  # fmt: skip
FREE_DOMAINS = frozenset(
    {"gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "hotmail.com", "live.com", "aol.com",
     "icloud.com", "proton.me", "gmx.com"}
)  # fmt: skip
CATCH_ALL_DOMAINS = frozenset({"acceptall.example"})
WRONG_LOCAL_PREFIXES = ("bounce", "invalid", "nobody")
WRONG_DOMAINS = frozenset({"invalid.example"})

EMAIL_RESULT_FIELDS = (
    "email", "valid", "wrong", "unknown", "quality", "result",
    "is_syntax_error", "is_free", "is_role", "is_disposable", "is_catch_all",
)  # fmt: skip
PHONE_RESULT_FIELDS = (
    "phone", "valid", "wrong", "unknown", "type", "status",
    "is_syntax_error", "is_ported", "current_network_mcc", "current_network_mnc", "operator",
)  # fmt: skip

_PHONE_TYPES = {
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE: "landline",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "mobile_or_landline",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.VOICEMAIL: "voicemail_only",
}
# (status, verdict) by the number's last two digits, checked before the last-digit rules.
_STATUS_BY_LAST_TWO = {
    "81": ("absent_subscriber", "unknown"),
    "82": ("no_teleservice_provisioned", "wrong"),
    "83": ("not_available_network_only", "unknown"),
    "84": ("no_coverage", "unknown"),
}
_STATUS_BY_LAST_ONE = {"0": ("dead", "wrong"), "9": ("inconclusive", "unknown")}
# region → (MCC, MNC, operator) reported for its live mobile numbers.
MOBILE_NETWORKS = {
    "SG": ("525", "01", "Singtel"),
    "US": ("310", "410", "AT&T Mobility"),
    "GB": ("234", "15", "Vodafone UK"),
    "DE": ("262", "01", "Telekom Deutschland"),
    "FR": ("208", "01", "Orange France"),
    "AU": ("505", "01", "Telstra"),
    "IN": ("404", "10", "Airtel"),
}


def is_country_code(value: object) -> bool:
    """True for an upper-case ISO 3166-1 alpha-2 code such as "US"."""
    return isinstance(value, str) and value in ISO_COUNTRIES


def is_global_cache_hit(value: str) -> bool:
    # sha256 rather than hash(): Python salts str hashes per process, the sandbox must not vary.
    return hashlib.sha256(value.encode("utf-8")).digest()[0] % 10 == 0


def is_well_formed(kind: str, value: str, target_country: str) -> bool:
    if kind == "email":
        return is_well_formed_email(value)
    return parse_phone(value, target_country) is not None


def verdict(kind: str, value: str, target_country: str) -> dict[str, object]:
    """The full export result object of one value, fields in the documented order."""
    if kind == "email":
        return email_verdict(value)
    return phone_verdict(value, target_country)


def is_well_formed_email(value: str) -> bool:
    if value.count("@") != 1 or any(ch.isspace() or ch == "," for ch in value):
        return False
    local, domain = value.split("@")
    labels = domain.split(".")
    return bool(local) and len(labels) >= 2 and all(labels)


def email_verdict(value: str) -> dict[str, object]:
    if not is_well_formed_email(value):
        return _email_result(value, "wrong", "bad", "invalid", is_syntax_error=True)
    local, domain = value.lower().split("@")
    flags = {
        "is_free": domain in FREE_DOMAINS,
        "is_role": local in ROLE_LOCAL_PARTS,
        "is_disposable": domain in DISPOSABLE_DOMAINS,
        "is_catch_all": domain.startswith("catchall") or domain in CATCH_ALL_DOMAINS,
    }
    if local.startswith(WRONG_LOCAL_PREFIXES) or domain in WRONG_DOMAINS or domain.endswith(".invalid"):
        return _email_result(value, "wrong", "bad", "invalid", **flags)
    if flags["is_disposable"]:
        return _email_result(value, "unknown", "bad", "ok", **flags)
    if flags["is_catch_all"]:
        return _email_result(value, "unknown", "risky", "unknown", **flags)
    if local.startswith("error"):
        return _email_result(value, "unknown", "unknown", "error", **flags)
    if local.startswith("unknown"):
        return _email_result(value, "unknown", "unknown", "unknown", **flags)
    if flags["is_role"]:
        return _email_result(value, "valid", "risky", "ok", **flags)
    return _email_result(value, "valid", "good", "ok", **flags)


def _email_result(value: str, outcome: str, quality: str, result: str, **flags: bool) -> dict[str, object]:
    return {
        "email": value,
        "valid": outcome == "valid",
        "wrong": outcome == "wrong",
        "unknown": outcome == "unknown",
        "quality": quality,
        "result": result,
        "is_syntax_error": flags.get("is_syntax_error", False),
        "is_free": flags.get("is_free", False),
        "is_role": flags.get("is_role", False),
        "is_disposable": flags.get("is_disposable", False),
        "is_catch_all": flags.get("is_catch_all", False),
    }


def parse_phone(value: str, target_country: str) -> phonenumbers.PhoneNumber | None:
    """The parsed number, or None when the value is not a valid phone number."""
    try:
        number = phonenumbers.parse(value, target_country)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


def phone_verdict(value: str, target_country: str) -> dict[str, object]:
    number = parse_phone(value, target_country)
    if number is None:
        return _phone_result(value, "wrong", "bad_format", "not_applicable", is_syntax_error=True)
    digits = str(number.national_number)
    status, outcome = _STATUS_BY_LAST_TWO.get(digits[-2:]) or _STATUS_BY_LAST_ONE.get(
        digits[-1], ("live", "valid")
    )
    kind = _PHONE_TYPES.get(phonenumbers.number_type(number), "unknown")
    network = None
    if kind in ("mobile", "mobile_or_landline") and status != "dead":
        network = MOBILE_NETWORKS.get(phonenumbers.region_code_for_number(number) or "")
    return _phone_result(
        value, outcome, kind, status, is_ported=len(digits) > 1 and digits[-2] == "7", network=network
    )


def _phone_result(
    value: str,
    outcome: str,
    kind: str,
    status: str,
    *,
    is_syntax_error: bool = False,
    is_ported: bool = False,
    network: tuple[str, str, str] | None = None,
) -> dict[str, object]:
    mcc, mnc, operator = network or (None, None, None)
    return {
        "phone": value,
        "valid": outcome == "valid",
        "wrong": outcome == "wrong",
        "unknown": outcome == "unknown",
        "type": kind,
        "status": status,
        "is_syntax_error": is_syntax_error,
        "is_ported": is_ported,
        "current_network_mcc": mcc,
        "current_network_mnc": mnc,
        "operator": operator,
    }
