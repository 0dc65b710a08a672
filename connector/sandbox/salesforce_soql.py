"""The SOQL subset the Salesforce sandbox answers, parsed by hand and run over the record store.

    SELECT field, Relationship.field, ... | COUNT()
    FROM Contact | Lead | Campaign | CampaignMember
    [WHERE condition]  -- =, !=, <>, <, >, <=, >=, LIKE, IN (...), NOT IN (...), AND, OR, NOT,
                       -- parentheses; values: 'strings', NULL, TRUE, FALSE, datetimes
                       -- (2024-01-31T10:00:00Z), dates (2024-01-31, for date fields) and
                       -- date literals (TODAY, LAST_N_DAYS:30, ...)
    [ORDER BY field [ASC|DESC] [NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]

As in Salesforce: keywords and field names are case-insensitive, text comparisons too; AND and
OR cannot be mixed without parentheses; `field != 'x'` matches records where the field is null;
15-character ids match their 18-character form. A query is parsed (`parse`, syntax only:
MALFORMED_QUERY), then bound to the schema (`bind`: INVALID_FIELD, INVALID_TYPE, ...) into a
`BoundQuery` that knows which fields it needs and filters, sorts and renders records.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from connector.sandbox.salesforce_ids import to_18
from connector.sandbox.salesforce_records import Needed
from connector.sandbox.salesforce_schema import (
    Field,
    ObjectSchema,
    Schema,
    parse_date,
    parse_datetime,
    to_csv,
    to_json,
)

MAX_OFFSET = 2000
WSDL_HINT = "Please reference your WSDL or the describe call for the appropriate names."
UNKNOWN_OBJECT = (
    "sObject type '{name}' is not supported. If you are attempting to use a custom object, be sure to "
    "append the '__c' after the entity name. " + WSDL_HINT
)
UNKNOWN_FIELD = (
    "No such column '{name}' on entity '{entity}'. If you are attempting to use a custom field, be sure "
    "to append the '__c' after the custom field name. " + WSDL_HINT
)
UNKNOWN_RELATIONSHIP = (
    "Didn't understand relationship '{name}' in field path. If you are attempting to use a custom "
    "relationship, be sure to append the '__r' after the custom relationship name. " + WSDL_HINT
)
TEXT_TYPES = ("string", "email", "phone", "picklist", "textarea")
ID_TYPES = ("id", "reference")


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- tokens -------------------------------------------------------------------------------------

TOKEN_PATTERN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?::\d+)?)
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    """,
    re.VERBOSE,
)
STRING_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


@dataclass(frozen=True)
class Token:
    kind: str  # string | datetime | date | number | name | op | punct | end
    text: str
    pos: int

    def is_word(self, *words: str) -> bool:
        return self.kind == "name" and self.text.upper() in words


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        match = TOKEN_PATTERN.match(text, pos)
        if match is None:
            raise SoqlError("MALFORMED_QUERY", _at(text, pos, f"unexpected token: '{text[pos:].split()[0]}'"))
        if match.lastgroup != "space":
            tokens.append(Token(str(match.lastgroup), match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _at(text: str, pos: int, message: str) -> str:
    """Salesforce's way of pointing at the offending spot of a query."""
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    line = text[line_start : None if line_end < 0 else line_end]
    row, column = text.count("\n", 0, pos) + 1, pos - line_start + 1
    return f"\n{line}\n{' ' * (column - 1)}^\nERROR at Row:{row}:Column:{column}\n{message}"


# ---- syntax -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Name:
    text: str
    pos: int


@dataclass(frozen=True)
class Literal:
    kind: str  # string | number | null | boolean | date | datetime | date_literal
    value: Any
    pos: int


@dataclass(frozen=True)
class Comparison:
    name: Name
    op: str  # = != < > <= >= LIKE IN NOT IN
    values: tuple[Literal, ...]


@dataclass(frozen=True)
class Junction:
    op: str  # AND | OR
    parts: tuple[Condition, ...]


@dataclass(frozen=True)
class Negation:
    part: Condition


Condition = Comparison | Junction | Negation


@dataclass(frozen=True)
class OrderKey:
    name: Name
    descending: bool
    nulls_last: bool


@dataclass(frozen=True)
class ParsedQuery:
    text: str
    fields: tuple[Name, ...]  # empty for SELECT COUNT()
    object: Name
    where: Condition | None
    order_by: tuple[OrderKey, ...]
    limit: int | None
    offset: int


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.token
        self.index += 1
        return token

    def unexpected(self) -> SoqlError:
        shown = "<EOF>" if self.token.kind == "end" else f"'{self.token.text}'"
        return SoqlError("MALFORMED_QUERY", _at(self.text, self.token.pos, f"unexpected token: {shown}"))

    def expect_word(self, *words: str) -> Token:
        if not self.token.is_word(*words):
            raise self.unexpected()
        return self.advance()

    def expect_punct(self, char: str) -> None:
        if self.token.kind != "punct" or self.token.text != char:
            raise self.unexpected()
        self.advance()

    def name(self) -> Name:
        if self.token.kind != "name" or ":" in self.token.text:
            raise self.unexpected()
        token = self.advance()
        return Name(token.text, token.pos)

    def query(self) -> ParsedQuery:
        self.expect_word("SELECT")
        fields = self.select_list()
        self.expect_word("FROM")
        object_name = self.name()
        where = self.condition() if self._take_word("WHERE") else None
        order_by: list[OrderKey] = []
        if self._take_word("ORDER"):
            self.expect_word("BY")
            order_by = self.order_list()
        limit = self.integer() if self._take_word("LIMIT") else None
        offset = self.integer() if self._take_word("OFFSET") else 0
        if self.token.kind != "end":
            raise self.unexpected()
        return ParsedQuery(self.text, tuple(fields), object_name, where, tuple(order_by), limit, offset)

    def _take_word(self, word: str) -> bool:
        if self.token.is_word(word):
            self.advance()
            return True
        return False

    def select_list(self) -> list[Name]:
        if self.token.is_word("COUNT") and self.tokens[self.index + 1].text == "(":
            self.advance()
            self.expect_punct("(")
            self.expect_punct(")")
            return []
        fields = [self.name()]
        while self.token.text == ",":
            self.advance()
            fields.append(self.name())
        return fields

    def order_list(self) -> list[OrderKey]:
        keys = []
        while True:
            name = self.name()
            descending = self.token.is_word("DESC")
            if self.token.is_word("ASC", "DESC"):
                self.advance()
            nulls_last = descending
            if self._take_word("NULLS"):
                nulls_last = self.expect_word("FIRST", "LAST").text.upper() == "LAST"
            keys.append(OrderKey(name, descending, nulls_last))
            if self.token.text != ",":
                return keys
            self.advance()

    def integer(self) -> int:
        if self.token.kind != "number" or not self.token.text.isdigit():
            raise self.unexpected()
        return int(self.advance().text)

    def condition(self) -> Condition:
        """Operands joined by one connector: SOQL needs parentheses to mix AND and OR."""
        parts = [self.operand()]
        connector = None
        while self.token.is_word("AND", "OR"):
            if connector is not None and self.token.text.upper() != connector:
                raise self.unexpected()
            connector = self.advance().text.upper()
            parts.append(self.operand())
        return parts[0] if connector is None else Junction(connector, tuple(parts))

    def operand(self) -> Condition:
        if self._take_word("NOT"):
            return Negation(self.operand())
        if self.token.text == "(":
            self.advance()
            inner = self.condition()
            self.expect_punct(")")
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        name = self.name()
        if self.token.kind == "op":
            op = self.advance().text
            return Comparison(name, "!=" if op == "<>" else op, (self.literal(),))
        if self._take_word("LIKE"):
            return Comparison(name, "LIKE", (self.literal(),))
        negated = self._take_word("NOT")
        self.expect_word("IN")
        self.expect_punct("(")
        values = [self.literal()]
        while self.token.text == ",":
            self.advance()
            values.append(self.literal())
        self.expect_punct(")")
        return Comparison(name, "NOT IN" if negated else "IN", tuple(values))

    def literal(self) -> Literal:
        token = self.token
        if token.kind == "string":
            self.advance()
            return Literal("string", _unquote(token.text), token.pos)
        if token.kind in ("datetime", "date", "number"):
            self.advance()
            return Literal(token.kind, token.text, token.pos)
        if token.is_word("NULL"):
            self.advance()
            return Literal("null", None, token.pos)
        if token.is_word("TRUE", "FALSE"):
            self.advance()
            return Literal("boolean", token.text.upper() == "TRUE", token.pos)
        if token.kind == "name" and _date_range(token.text, datetime.now(UTC)) is not None:
            self.advance()
            return Literal("date_literal", token.text.upper(), token.pos)
        raise self.unexpected()


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: STRING_ESCAPES.get(m.group(1), m.group(1)), quoted[1:-1])


def parse(text: str) -> ParsedQuery:
    return _Parser(text).query()


# ---- date literals ------------------------------------------------------------------------------


def _date_range(text: str, now: datetime) -> tuple[datetime, datetime] | None:
    """[start, end) of a date literal such as TODAY or LAST_N_DAYS:30 (UTC days), or None."""
    name, _, number = text.upper().partition(":")
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = timedelta(days=1)
    fixed = {
        "TODAY": (today, today + day),
        "YESTERDAY": (today - day, today),
        "TOMORROW": (today + day, today + 2 * day),
    }
    if not number:
        return fixed.get(name)
    n = int(number)
    ranges = {
        "LAST_N_DAYS": (today - n * day, today + day),  # today and the n days before it
        "NEXT_N_DAYS": (today + day, today + (n + 1) * day),
        "N_DAYS_AGO": (today - n * day, today - (n - 1) * day),
    }
    return ranges.get(name)


# ---- binding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldPath:
    field: Field
    relationship: str | None = None  # canonical relationship name, e.g. "Contact"
    id_field: str | None = None  # the reference field behind it, e.g. "ContactId"
    target: str | None = None  # the related object, e.g. "Contact"

    @property
    def label(self) -> str:
        return f"{self.relationship}.{self.field.name}" if self.relationship else self.field.name

    def value(self, view: dict[str, Any]) -> Any:
        if self.relationship is None:
            return view.get(self.field.name)
        related = view.get(self.relationship)
        return None if related is None else related.get(self.field.name)

    def normal(self, view: dict[str, Any]) -> Any:
        """The value as literals are held: text lower-cased (SOQL compares text case-insensitively)."""
        value = self.value(view)
        return value.lower() if isinstance(value, str) and self.field.type in TEXT_TYPES else value


Predicate = Callable[[dict[str, Any]], bool]


class RecordSource(Protocol):
    def serials(self, object_name: str) -> Iterator[int]: ...
    def view(self, serial: int, needed: Needed) -> dict[str, Any]: ...


@dataclass
class BoundQuery:
    text: str
    object_name: str
    select: list[FieldPath]  # empty for COUNT()
    where: Predicate | None
    order_by: list[tuple[FieldPath, bool, bool]]  # (path, descending, nulls last)
    limit: int | None
    offset: int
    where_paths: list[FieldPath]
    needed: Needed = field(init=False)  # to render a record
    needed_to_filter: Needed = field(init=False)  # to filter and sort: often much less

    def __post_init__(self) -> None:
        ordering = [key[0] for key in self.order_by]
        self.needed = _needed([*self.select, *self.where_paths, *ordering], {"Id", "IsDeleted"})
        self.needed_to_filter = _needed([*self.where_paths, *ordering], {"IsDeleted"})

    @property
    def is_count(self) -> bool:
        return not self.select

    def run(self, records: RecordSource, *, include_deleted: bool) -> array[int]:
        """Serials of the matching records, sorted, after OFFSET and LIMIT."""
        wanted = None if self.limit is None else self.offset + self.limit
        found: list[tuple[tuple[Any, ...], int]] = []
        for serial in records.serials(self.object_name):
            view = records.view(serial, self.needed_to_filter)
            if (view.get("IsDeleted") and not include_deleted) or (self.where and not self.where(view)):
                continue
            found.append((self._sort_key(view), serial))
            if not self.order_by and wanted is not None and len(found) >= wanted:
                break
        self._sort(found)
        end = None if wanted is None else wanted
        return array("q", (serial for _, serial in found[self.offset : end]))

    def _sort_key(self, view: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(_order_value(path.value(view)) for path, _, _ in self.order_by)

    def _sort(self, found: list[tuple[tuple[Any, ...], int]]) -> None:
        # One stable sort per key, last key first; a null ranks where NULLS FIRST/LAST puts it.
        for position in reversed(range(len(self.order_by))):
            _, descending, nulls_last = self.order_by[position]
            null_rank = 1 if nulls_last != descending else 0

            def key(
                item: tuple[tuple[Any, ...], int], position: int = position, null_rank: int = null_rank
            ) -> Any:
                value = item[0][position]
                return (null_rank,) if value is None else (1 - null_rank, value)

            found.sort(key=key, reverse=descending)

    def record_json(self, view: dict[str, Any], version: str) -> dict[str, Any]:
        record: dict[str, Any] = {"attributes": _attributes(self.object_name, view.get("Id"), version)}
        for path in self.select:
            if path.relationship is None:
                record[path.field.name] = to_json(view.get(path.field.name))
                continue
            related = view.get(path.relationship)
            if related is None:
                record.setdefault(path.relationship, None)
                continue
            nested = record.get(path.relationship) or {
                "attributes": _attributes(path.target, related["Id"], version)
            }
            nested[path.field.name] = to_json(related.get(path.field.name))
            record[path.relationship] = nested
        return record

    def csv_header(self) -> list[str]:
        return [path.label for path in self.select]

    def csv_row(self, view: dict[str, Any]) -> list[str]:
        return [to_csv(path.value(view)) for path in self.select]


def _attributes(object_name: str | None, record_id: str | None, version: str) -> dict[str, str]:
    return {"type": str(object_name), "url": f"/services/data/v{version}/sobjects/{object_name}/{record_id}"}


def _needed(paths: list[FieldPath], always: set[str]) -> Needed:
    fields = set(always)
    related: dict[str, tuple[str, set[str]]] = {}
    for path in paths:
        if path.relationship is None:
            fields.add(path.field.name)
        else:
            assert path.id_field is not None
            fields.add(path.id_field)
            related.setdefault(path.relationship, (path.id_field, {"Id"}))[1].add(path.field.name)
    return Needed(
        frozenset(fields), {rel: (id_field, frozenset(names)) for rel, (id_field, names) in related.items()}
    )


def _order_value(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def bind(parsed: ParsedQuery, schema: Schema, now: datetime | None = None) -> BoundQuery:
    return _Binder(parsed, schema, now or datetime.now(UTC)).bind()


def compile_query(text: str, schema: Schema) -> BoundQuery:
    return bind(parse(text), schema)


class _Binder:
    def __init__(self, parsed: ParsedQuery, schema: Schema, now: datetime) -> None:
        self.parsed = parsed
        self.schema = schema
        self.now = now
        self.where_paths: list[FieldPath] = []
        found = schema.object(parsed.object.text)
        if found is None:
            message = UNKNOWN_OBJECT.format(name=parsed.object.text)
            raise SoqlError("INVALID_TYPE", self._at(parsed.object.pos, message))
        self.object: ObjectSchema = found

    def _at(self, pos: int, message: str) -> str:
        return _at(self.parsed.text, pos, message)

    def bind(self) -> BoundQuery:
        parsed = self.parsed
        select = [self.path(name) for name in parsed.fields]
        where = None if parsed.where is None else self.condition(parsed.where)
        order_by = [(self.path(key.name), key.descending, key.nulls_last) for key in parsed.order_by]
        if parsed.offset > MAX_OFFSET:
            raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE", f"Maximum SOQL offset allowed is {MAX_OFFSET}")
        return BoundQuery(
            parsed.text,
            self.object.name,
            select,
            where,
            order_by,
            parsed.limit,
            parsed.offset,
            self.where_paths,
        )

    def path(self, name: Name) -> FieldPath:
        relationship, _, field_name = name.text.rpartition(".")
        if not relationship:
            return FieldPath(self._field(self.object, field_name, name))
        if "." in relationship:
            raise SoqlError(
                "INVALID_FIELD", self._at(name.pos, "The sandbox follows one relationship level only")
            )
        reference = self.object.relationship(relationship)
        target = self.schema.object(reference.reference_to or "") if reference else None
        if reference is None or target is None:
            message = UNKNOWN_RELATIONSHIP.format(name=relationship)
            raise SoqlError("INVALID_FIELD", self._at(name.pos, message))
        return FieldPath(
            self._field(target, field_name, name), reference.relationship, reference.name, target.name
        )

    def _field(self, owner: ObjectSchema, field_name: str, name: Name) -> Field:
        found = owner.field(field_name)
        if found is None:
            message = UNKNOWN_FIELD.format(name=field_name, entity=owner.name)
            raise SoqlError("INVALID_FIELD", self._at(name.pos, message))
        return found

    def condition(self, condition: Condition) -> Predicate:
        if isinstance(condition, Junction):
            parts = [self.condition(part) for part in condition.parts]
            if condition.op == "AND":
                return lambda view: all(part(view) for part in parts)
            return lambda view: any(part(view) for part in parts)
        if isinstance(condition, Negation):
            inner = self.condition(condition.part)
            return lambda view: not inner(view)
        return self.comparison(condition)

    def comparison(self, comparison: Comparison) -> Predicate:
        path = self.path(comparison.name)
        self.where_paths.append(path)
        op = comparison.op
        if op == "LIKE":
            return self._like(path, comparison.values[0])
        values = [self._value(path, literal, op) for literal in comparison.values]
        if op in ("IN", "NOT IN"):
            wanted, inside = set(values), op == "IN"
            return lambda view: (path.normal(view) in wanted) == inside
        value = values[0]
        if isinstance(value, tuple):
            return _in_range(path, op, value)
        return _compare(path, op, value)

    def _like(self, path: FieldPath, literal: Literal) -> Predicate:
        if path.field.type not in TEXT_TYPES + ID_TYPES or literal.kind != "string":
            raise SoqlError(
                "INVALID_QUERY_FILTER_OPERATOR",
                self._at(literal.pos, f"invalid operator on {path.field.type} field: LIKE"),
            )
        pattern = re.compile(_like_regex(literal.value), re.IGNORECASE | re.DOTALL)
        return lambda view: (
            isinstance(value := path.value(view), str) and pattern.fullmatch(value) is not None
        )

    def _value(self, path: FieldPath, literal: Literal, op: str) -> Any:
        """The literal as the field's type holds it; a (start, end) pair for a date literal."""
        f, kind = path.field, literal.kind
        if kind == "null":
            if op not in ("=", "!=", "IN", "NOT IN"):
                raise self._type_error(f, literal, "a value")
            return None
        if f.type == "boolean":
            if kind != "boolean":
                raise self._type_error(f, literal, "of type boolean and should not be enclosed in quotes")
            return literal.value
        if f.type == "date":
            if kind == "date_literal":
                bounds = _date_range(literal.value, self.now)
                assert bounds is not None  # the parser took it as a date literal
                return bounds[0].date(), bounds[1].date()
            if kind != "date":
                raise self._type_error(f, literal, "of type date and should not be enclosed in quotes")
            return parse_date(literal.value)
        if f.type == "datetime":
            if kind == "date_literal":
                return _date_range(literal.value, self.now)
            if kind != "datetime":
                raise self._type_error(f, literal, "of type dateTime and should not be enclosed in quotes")
            return parse_datetime(literal.value)
        if kind != "string":
            raise self._type_error(f, literal, "of type string and should be enclosed in quotes")
        if f.type in ID_TYPES:
            id18 = to_18(literal.value)
            if id18 is None:
                raise SoqlError(
                    "INVALID_QUERY_FILTER_OPERATOR",
                    self._at(literal.pos, f"invalid ID field: {literal.value}"),
                )
            return id18
        return literal.value.lower()

    def _type_error(self, f: Field, literal: Literal, wanted: str) -> SoqlError:
        return SoqlError(
            "INVALID_FIELD",
            self._at(literal.pos, f"value of filter criterion for field '{f.name}' must be {wanted}"),
        )


def _compare(path: FieldPath, op: str, wanted: Any) -> Predicate:
    if op == "=":
        return lambda view: path.normal(view) == wanted
    if op == "!=":
        return lambda view: path.normal(view) != wanted
    order = {
        "<": lambda a, b: a < b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b,
    }[op]

    def ordered(view: dict[str, Any]) -> bool:
        value = path.normal(view)
        return value is not None and order(value, wanted)

    return ordered


def _in_range(path: FieldPath, op: str, bounds: tuple[Any, Any]) -> Predicate:
    """A date literal's [start, end) against a datetime field (datetimes) or a date field (dates)."""
    start, end = bounds
    tests: dict[str, Callable[[Any], bool]] = {
        "=": lambda v: start <= v < end,
        "!=": lambda v: not start <= v < end,
        "<": lambda v: v < start,
        "<=": lambda v: v < end,
        ">": lambda v: v >= end,
        ">=": lambda v: v >= start,
    }
    test = tests[op]

    def within(view: dict[str, Any]) -> bool:
        value = path.value(view)
        return op == "!=" if value is None else test(value)

    return within


def _like_regex(pattern: str) -> str:
    """LIKE's % and _ as a regex; a backslash escapes them."""
    parts, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            parts.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        parts.append({"%": ".*", "_": "."}.get(char, re.escape(char)))
        index += 1
    return "".join(parts)
