"""Which flags a verdict is written back as, for every CRM (DESIGN.md "What is written back").

A sync of emails writes six flags, one of phones four (a phone is neither a role address nor a
disposable inbox); each carries one attribute of the Verdict, in the order of `FLAGS`. A CRM
supplies only the default name of each flag (`FlagNames`; a connection may rename them with
`field_names`, default name -> the CRM's name) and, where its API takes them differently, how a
value is written: booleans as true/false and times as ISO 8601 UTC with milliseconds unless it
says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from connector.crm.base import Verdict
from connector.crm.jobs import DEFAULT_BULK_THRESHOLD, utc_iso_millis
from connector.errors import ConfigError

ApiT = TypeVar("ApiT")

FLAGS: dict[str, tuple[str, ...]] = {
    "email": ("valid", "wrong", "is_role", "is_disposable", "status", "verified_at"),
    "phone": ("valid", "wrong", "status", "verified_at"),
}
# Every flag not named here is a boolean; `is_role` and `is_disposable` may be unknown (None).
KINDS = {"status": "status", "verified_at": "verified_at"}


@dataclass(frozen=True)
class FlagField:
    name: str  # the CRM's name for it
    attribute: str  # the Verdict attribute it carries
    type_: str  # email | phone

    @property
    def kind(self) -> str:
        """bool, status or verified_at."""
        return KINDS.get(self.attribute, "bool")

    def value(self, verdict: Verdict) -> Any:
        """bool or None, str, or datetime, by `kind`."""
        return getattr(verdict, self.attribute)

    def text(
        self, verdict: Verdict, *, unknown: str, moment: Callable[[datetime], str] = utc_iso_millis
    ) -> str:
        """The value as text: true/false, the time as `moment` writes it, the status as it is;
        `unknown` for an unknown boolean."""
        value = self.value(verdict)
        if value is None:
            return unknown
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "verified_at":
            return moment(value)
        return str(value)


@dataclass(frozen=True)
class FlagNames:
    """One CRM's default name for every flag, and what its messages call them."""

    crm: str  # the CRM's label, in messages
    fields_are: str  # "properties": what a rename of an unknown name is said to rename
    defaults: Mapping[str, Mapping[str, str]]  # type -> Verdict attribute -> default name

    def __post_init__(self) -> None:
        if {t: tuple(names) for t, names in self.defaults.items()} != FLAGS:
            raise ValueError(f"{self.crm} must name every flag of FLAGS, in its order")

    def check_type(self, type_: str) -> None:
        if type_ not in FLAGS:
            raise ConfigError("invalid_type", f"{self.crm} syncs verify email or phone, not {type_!r}")

    def fields(self, type_: str, field_names: Mapping[str, str] | None = None) -> list[FlagField]:
        """The flags a sync of `type_` writes, renamed by `field_names` (default name -> name)."""
        self.check_type(type_)
        renames = field_names or {}
        known = {name for names in self.defaults.values() for name in names.values()}
        unknown = sorted(set(renames) - known)
        if unknown:
            raise ConfigError(
                "invalid_field_names", f"field_names renames unknown {self.fields_are}: {unknown}"
            )
        defaults = self.defaults[type_]
        return [FlagField(renames.get(defaults[a], defaults[a]), a, type_) for a in FLAGS[type_]]

    def verified_at(self, type_: str, field_names: Mapping[str, str] | None = None) -> str:
        """The name of the flag saying when a record of `type_` was verified (read to skip recent ones)."""
        return next(f.name for f in self.fields(type_, field_names) if f.attribute == "verified_at")


class FlagWriting(Generic[ApiT]):
    """What every CRM's flag writer starts from: its API, the flags of the sync's type, and whether
    the sync writes them with REST batches of `rest_batch` or bulk jobs of `bulk_batch` each (when
    it expects more than `bulk_threshold` updates)."""

    names: ClassVar[FlagNames]
    rest_batch: ClassVar[int]
    bulk_batch: ClassVar[int]

    def __init__(
        self,
        api: ApiT,
        type_: str,
        *,
        expected_updates: int = 0,
        bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
        field_names: dict[str, str] | None = None,
        work_dir: Path,
    ) -> None:
        self.api = api
        self.type = type_
        self.fields = self.names.fields(type_, field_names)
        self.bulk = expected_updates > bulk_threshold
        self.batch_size = self.bulk_batch if self.bulk else self.rest_batch
        self.work_dir = Path(work_dir)
