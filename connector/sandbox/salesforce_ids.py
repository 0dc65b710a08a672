"""Salesforce record ids for the sandbox: valid-looking 18-character ids that map back to a serial.

A Salesforce id is 15 case-sensitive characters (3-char key prefix naming the object, then the
record's own part) plus a 3-character suffix that makes it case-insensitive: each suffix character
encodes, for one 5-character chunk of the 15, which of its characters are upper-case letters.

The sandbox builds ids as `prefix + "Dn000" + 7 base-62 digits of a serial`, so an id it issued
maps back to the serial that indexes its storage without any lookup table. Each org of the sandbox
takes its serials from a range of its own (`ORG_SERIAL_SPAN` wide), so ids never repeat across orgs,
as on Salesforce.
"""

from __future__ import annotations

import string

KEY_PREFIXES = {
    "Account": "001",
    "Contact": "003",
    "Lead": "00Q",
    "Campaign": "701",
    "CampaignMember": "00v",
    "CampaignMemberStatus": "01Y",
    "Organization": "00D",
    "User": "005",
    "Job": "750",
    "QueryLocator": "01g",
}
OBJECT_BY_PREFIX = {prefix: name for name, prefix in KEY_PREFIXES.items()}

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
SUFFIX_ALPHABET = string.ascii_uppercase + "012345"
SANDBOX_MARK = "Dn000"  # pod and reserved characters of every id the sandbox issues
SERIAL_DIGITS = 7
MAX_ORGS = 64
ORG_SERIAL_SPAN = 62**SERIAL_DIGITS // MAX_ORGS  # serials of org n: n * span + 1 ...


# Upper-case letters to "1", every other id character to "0": read backwards, a 15-bit number whose
# bit i says whether character i is upper-case (ids are built by the million, so this is worth it).
UPPER_BITS = str.maketrans({char: "1" if char.isupper() else "0" for char in BASE62})


def case_suffix(id15: str) -> str:
    bits = int(id15.translate(UPPER_BITS)[::-1], 2)
    return SUFFIX_ALPHABET[bits & 31] + SUFFIX_ALPHABET[(bits >> 5) & 31] + SUFFIX_ALPHABET[bits >> 10]


DIGIT_PAIRS = [high + low for high in BASE62 for low in BASE62]  # 00, 01, ... zz


def make_id(prefix: str, serial: int) -> str:
    if not 0 <= serial < 62**SERIAL_DIGITS:
        raise ValueError("serial out of range for a sandbox id")
    high, low = divmod(serial, 3844)
    top, middle = divmod(high, 3844)
    first, second = divmod(top, 3844)
    id15 = (
        prefix + SANDBOX_MARK + BASE62[first] + DIGIT_PAIRS[second] + DIGIT_PAIRS[middle] + DIGIT_PAIRS[low]
    )
    return id15 + case_suffix(id15)


def to_18(value: object) -> str | None:
    """The 18-character form of a 15- or 18-character id; None when `value` is not a well-formed id."""
    if not isinstance(value, str) or len(value) not in (15, 18) or not all(c in BASE62 for c in value):
        return None
    id18 = value[:15] + case_suffix(value[:15])
    # Salesforce accepts an 18-character id whatever the suffix's case, never with a wrong suffix.
    return id18 if len(value) == 15 or value[15:].upper() == id18[15:] else None


def to_org_id(value: object) -> str:
    """The 18-character form of an org id (15 or 18 characters, key prefix 00D); ValueError saying why not."""
    id18 = to_18(value)
    if id18 is not None and object_for_id(id18) == "Organization":
        return id18
    hint = ""
    if isinstance(value, str) and len(value) == 18 and to_18(value[:15]):
        hint = f"; the case suffix is wrong: {value[:15]} is {to_18(value[:15])} in 18 characters"
    raise ValueError(f"{value!r} is not an org id (15 or 18 characters, key prefix 00D{hint})")


PAIR_VALUES = {pair: value for value, pair in enumerate(DIGIT_PAIRS)}


def serial_of(id18: str) -> int | None:
    """The serial of an id the sandbox issued (any prefix); None for any other id."""
    if id18[3:8] != SANDBOX_MARK:
        return None
    digits = id18[8:15]
    high = BASE62.index(digits[0]) * 3844 + PAIR_VALUES[digits[1:3]]
    return (high * 3844 + PAIR_VALUES[digits[3:5]]) * 3844 + PAIR_VALUES[digits[5:7]]


def object_for_id(id18: str) -> str | None:
    """The object an id's key prefix names (Contact for 003...)."""
    return OBJECT_BY_PREFIX.get(id18[:3])
