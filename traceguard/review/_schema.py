"""The review queue's SQLite schema and its migrations.

Version 1 is the queue as first released (``traceguard._review``): one ``escalations`` table with
hashes, the reason and the verdict. Version 2 adds what a reviewer needs (the audited text, the
images as re-encoded thumbnails, where the trace came from), the public ``escalation_id``, the
columns and indexes the review app filters on, and delivery marks for resumers. Version 3 adds
``tallies`` (item counts by state, source, risk level and auditor) and ``category_tallies`` (by
category and state), kept by triggers, so the app's counts cost a handful of rows however long
the queue.

A fresh file is built by running version 1's schema and then every migration, so the migration
path is the one path, exercised on every new queue. Migrations run inside ``BEGIN IMMEDIATE``
and re-read ``PRAGMA user_version`` there, so two processes opening an old file at once migrate
it once.
"""

from __future__ import annotations

import sqlite3

__all__ = ["SCHEMA_VERSION", "connect", "migrate"]

SCHEMA_VERSION = 3

_V1 = """
CREATE TABLE IF NOT EXISTS escalations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id     TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    trace_id      TEXT,
    content_hash  TEXT NOT NULL,
    action        TEXT NOT NULL,
    disposition   TEXT NOT NULL,
    reason        TEXT NOT NULL,
    verdict_json  TEXT NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'resolved')),
    resolution    TEXT CHECK (resolution IS NULL OR resolution IN ('approved', 'rejected')),
    reviewer      TEXT,
    note          TEXT,
    resolved_at   TEXT
);
CREATE INDEX IF NOT EXISTS escalations_by_status ON escalations (status, id);
"""

_V2_COLUMNS = (
    "escalation_id TEXT",
    "audit_status TEXT",
    "risk REAL",
    "label TEXT",
    "auditor TEXT",
    "categories TEXT",
    "integration TEXT",
    "model TEXT",
    "thread_id TEXT",
    "session_id TEXT",
    "run_id TEXT",
    "source_path TEXT",
    "source_line INTEGER",
    "source_turn INTEGER",
    "excerpt TEXT",
    "content_stored INTEGER NOT NULL DEFAULT 0",
    "query TEXT",
    "thinking TEXT",
    "response TEXT",
    "tool_calls_json TEXT",
    "history_json TEXT",
    "delivered_at TEXT",
    "delivered_to TEXT",
)

_V2_TABLES = """
CREATE TABLE IF NOT EXISTS escalation_images (
    escalation  INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    identity    TEXT NOT NULL,
    mime        TEXT CHECK (mime IS NULL OR mime IN ('image/png', 'image/jpeg')),
    width       INTEGER,
    height      INTEGER,
    data        BLOB,
    note        TEXT,
    PRIMARY KEY (escalation, position)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS escalation_categories (
    category    TEXT NOT NULL,
    escalation  INTEGER NOT NULL,
    PRIMARY KEY (category, escalation)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS escalation_categories_by_item ON escalation_categories (escalation);
CREATE TABLE IF NOT EXISTS facets (
    kind   TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (kind, value)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS escalations_by_escalation_id ON escalations (escalation_id);
CREATE INDEX IF NOT EXISTS escalations_by_resolution ON escalations (resolution, id);
CREATE INDEX IF NOT EXISTS escalations_by_label ON escalations (label, id);
CREATE INDEX IF NOT EXISTS escalations_by_audit_status ON escalations (audit_status, id);
CREATE INDEX IF NOT EXISTS escalations_by_auditor ON escalations (auditor, id);
CREATE INDEX IF NOT EXISTS escalations_by_integration ON escalations (integration, id);
CREATE INDEX IF NOT EXISTS escalations_by_created ON escalations (created_at);
CREATE INDEX IF NOT EXISTS escalations_by_thread ON escalations (thread_id, id);
CREATE INDEX IF NOT EXISTS escalations_to_deliver ON escalations (id)
    WHERE status = 'resolved' AND delivered_at IS NULL AND thread_id IS NOT NULL;
"""

# Rows written by version 1 keep their content-free shape; what can be read out of their stored
# verdict is copied into the new filter columns so the app can list and filter them.
_V2_BACKFILL = """
UPDATE escalations SET escalation_id = record_id WHERE escalation_id IS NULL;
UPDATE escalations SET
    audit_status = json_extract(verdict_json, '$.status'),
    risk = json_extract(verdict_json, '$.risk'),
    label = json_extract(verdict_json, '$.label'),
    auditor = json_extract(verdict_json, '$.auditor')
WHERE audit_status IS NULL AND json_valid(verdict_json);
INSERT OR IGNORE INTO escalation_categories (category, escalation)
    SELECT CAST(each.value AS TEXT), valid.id
    FROM (SELECT id, verdict_json FROM escalations WHERE json_valid(verdict_json)) AS valid,
         json_each(valid.verdict_json, '$.categories') AS each
    WHERE each.type = 'text';
INSERT OR IGNORE INTO facets (kind, value)
    SELECT DISTINCT 'auditor', auditor FROM escalations WHERE auditor IS NOT NULL;
INSERT OR IGNORE INTO facets (kind, value)
    SELECT DISTINCT 'category', category FROM escalation_categories;
"""

_V3 = """
CREATE TABLE IF NOT EXISTS tallies (
    state        TEXT NOT NULL,
    integration  TEXT NOT NULL,
    risk         TEXT NOT NULL,
    auditor      TEXT NOT NULL,
    n            INTEGER NOT NULL,
    PRIMARY KEY (state, integration, risk, auditor)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS escalations_by_created_state ON escalations (created_at, resolution);
DROP INDEX IF EXISTS escalations_by_created;
DELETE FROM tallies;
INSERT INTO tallies (state, integration, risk, auditor, n)
    SELECT coalesce(resolution, 'pending'), coalesce(integration, ''), coalesce(label, 'failed'),
           coalesce(auditor, ''), count(*)
    FROM escalations GROUP BY 1, 2, 3, 4;
CREATE TRIGGER IF NOT EXISTS tally_insert AFTER INSERT ON escalations BEGIN
    INSERT INTO tallies (state, integration, risk, auditor, n)
    VALUES (coalesce(NEW.resolution, 'pending'), coalesce(NEW.integration, ''),
            coalesce(NEW.label, 'failed'), coalesce(NEW.auditor, ''), 1)
    ON CONFLICT (state, integration, risk, auditor) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS tally_delete AFTER DELETE ON escalations BEGIN
    UPDATE tallies SET n = n - 1
    WHERE state = coalesce(OLD.resolution, 'pending')
      AND integration = coalesce(OLD.integration, '')
      AND risk = coalesce(OLD.label, 'failed') AND auditor = coalesce(OLD.auditor, '');
END;
CREATE TRIGGER IF NOT EXISTS tally_update
AFTER UPDATE OF resolution, integration, label, auditor ON escalations BEGIN
    UPDATE tallies SET n = n - 1
    WHERE state = coalesce(OLD.resolution, 'pending')
      AND integration = coalesce(OLD.integration, '')
      AND risk = coalesce(OLD.label, 'failed') AND auditor = coalesce(OLD.auditor, '');
    INSERT INTO tallies (state, integration, risk, auditor, n)
    VALUES (coalesce(NEW.resolution, 'pending'), coalesce(NEW.integration, ''),
            coalesce(NEW.label, 'failed'), coalesce(NEW.auditor, ''), 1)
    ON CONFLICT (state, integration, risk, auditor) DO UPDATE SET n = n + 1;
    UPDATE category_tallies SET n = n - 1
    WHERE state = coalesce(OLD.resolution, 'pending')
      AND category IN (SELECT category FROM escalation_categories WHERE escalation = OLD.id);
    INSERT INTO category_tallies (category, state, n)
    SELECT category, coalesce(NEW.resolution, 'pending'), 1 FROM escalation_categories
    WHERE escalation = NEW.id
    ON CONFLICT (category, state) DO UPDATE SET n = n + 1;
END;
CREATE TABLE IF NOT EXISTS category_tallies (
    category  TEXT NOT NULL,
    state     TEXT NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (category, state)
) WITHOUT ROWID;
DELETE FROM category_tallies;
INSERT INTO category_tallies (category, state, n)
    SELECT c.category, coalesce(e.resolution, 'pending'), count(*)
    FROM escalation_categories AS c JOIN escalations AS e ON e.id = c.escalation
    GROUP BY 1, 2;
CREATE TRIGGER IF NOT EXISTS category_tally_insert AFTER INSERT ON escalation_categories BEGIN
    INSERT INTO category_tallies (category, state, n)
    SELECT NEW.category, coalesce(resolution, 'pending'), 1 FROM escalations
    WHERE id = NEW.escalation
    ON CONFLICT (category, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS category_tally_delete AFTER DELETE ON escalation_categories BEGIN
    UPDATE category_tallies SET n = n - 1
    WHERE category = OLD.category AND state = coalesce(
        (SELECT resolution FROM escalations WHERE id = OLD.escalation), 'pending');
END;
"""


def connect(path: str, *, timeout: float) -> sqlite3.Connection:
    """An autocommit connection in WAL mode, usable from any thread (callers serialise use)."""
    # Autocommit (isolation_level=None): each statement is its own short transaction unless a
    # caller opens one explicitly, so no implicit transaction holds the write lock between calls.
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode; only an OS crash may lose the
        # last commits (the review queue's spill file covers what it has not committed yet).
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


def _version(conn: sqlite3.Connection) -> int:
    """The schema version: ``user_version``, except that version 1 never set it."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version:
        return version
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'escalations'"
    ).fetchone()
    return 1 if exists else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version it was found at.

    Raises:
        sqlite3.DatabaseError: the file is not a review queue, or was written by a newer version.
    """
    found = _version(conn)
    if found == SCHEMA_VERSION:
        return found
    if found > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"review queue schema version {found} is newer than this traceguard "
            f"understands ({SCHEMA_VERSION}); upgrade traceguard"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _version(conn)  # another process may have migrated while we waited for the lock
        if found < 1:
            for statement in _statements(_V1):
                conn.execute(statement)
        if found < 2:
            present = {row[1] for row in conn.execute("PRAGMA table_info(escalations)")}
            for column in _V2_COLUMNS:
                if column.split()[0] not in present:
                    conn.execute(f"ALTER TABLE escalations ADD COLUMN {column}")
            for statement in _statements(_V2_TABLES) + _statements(_V2_BACKFILL):
                conn.execute(statement)
        if found < 3:
            for statement in _triggered_statements(_V3):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _statements(script: str) -> list[str]:
    # executescript() would commit the open transaction first; run the statements one by one.
    return [part.strip() for part in script.split(";") if part.strip()]


def _triggered_statements(script: str) -> list[str]:
    """Like :func:`_statements`, but a ``CREATE TRIGGER … END`` stays one statement."""
    out: list[str] = []
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        text = pending.strip()
        if not text or text == ";":
            pending = ""
            continue
        if text.upper().startswith("CREATE TRIGGER") and not text.upper().endswith("END;"):
            continue
        out.append(text.rstrip(";"))
        pending = ""
    return out
