"""Secrets the server makes for itself: random, created once, kept in the database, shared by every process.

The first process that needs one generates it and inserts it with ON CONFLICT DO NOTHING, then
every process reads the row back, so concurrent first uses agree on the one that was committed.
A process remembers what it read (Runtime.memo): the row never changes, and a changed record hash
key would make every record look changed and spend credits verifying them all again.

Such a secret sits in the same database as what it protects: it keeps digests meaningless to
whoever sees them without the key (a copied table, an export, a log), not to whoever holds a
dump of the whole database.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select

from connector.db import dialect_insert
from connector.models import ServerSecret
from connector.runtime import Runtime

RECORD_HASH_KEY = "record_hash_key"
SECRET_BYTES = 32


def server_secret(runtime: Runtime, name: str) -> bytes:
    """The secret `name`, generated on first use; the same bytes in every process, for good."""
    memo_key = ("server_secret", name)
    if memo_key not in runtime.memo:
        runtime.memo[memo_key] = _load_or_create(runtime, name)
    return runtime.memo[memo_key]


def _load_or_create(runtime: Runtime, name: str) -> bytes:
    query = select(ServerSecret.value).where(ServerSecret.name == name)
    with runtime.session() as session:
        stored = session.scalar(query)
        if stored is None:
            session.execute(
                dialect_insert(session, ServerSecret)
                .values(name=name, value=secrets.token_hex(SECRET_BYTES))
                .on_conflict_do_nothing(index_elements=["name"])
            )
            stored = session.scalars(query).one()  # ours, or the one a concurrent first use committed
    return bytes.fromhex(stored)
