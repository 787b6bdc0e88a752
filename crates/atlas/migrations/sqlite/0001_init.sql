-- Atlas schema, version 1 (SQLite). Never edit once released: add a new migration instead.
-- Times are Unix milliseconds (INTEGER), so the same code reads SQLite and PostgreSQL.

CREATE TABLE task_force (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL
);

CREATE TABLE outlets (
    id INTEGER PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    auto_tlp TEXT NOT NULL DEFAULT 'amber+strict',
    created_ms INTEGER NOT NULL
);

-- Outlets that an outlet counts as "need to know" for its AMBER incidents.
CREATE TABLE need_to_know (
    outlet_id INTEGER NOT NULL REFERENCES outlets(id),
    peer_id INTEGER NOT NULL REFERENCES outlets(id),
    PRIMARY KEY (outlet_id, peer_id)
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    outlet_id INTEGER NOT NULL REFERENCES outlets(id),
    role TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_ms);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    outlet_id INTEGER NOT NULL REFERENCES outlets(id),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);

CREATE TABLE incident_kinds (
    code TEXT PRIMARY KEY,
    name_ru TEXT NOT NULL,
    name_kk TEXT NOT NULL,
    name_en TEXT NOT NULL,
    builtin INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    outlet_id INTEGER NOT NULL REFERENCES outlets(id),
    kind TEXT NOT NULL REFERENCES incident_kinds(code),
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    -- Lower-cased title and description (Unicode-aware, done by the service) for search.
    search TEXT NOT NULL,
    status TEXT NOT NULL,
    confidence TEXT NOT NULL,
    tlp TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    date_unknown INTEGER NOT NULL DEFAULT 0,
    downtime_minutes INTEGER,
    requests INTEGER,
    followers_added INTEGER,
    comments INTEGER,
    source TEXT NOT NULL,
    ingest_key TEXT,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (outlet_id, ingest_key)
);
CREATE INDEX incidents_outlet ON incidents(outlet_id, started_ms);
CREATE INDEX incidents_started ON incidents(started_ms, id);
CREATE INDEX incidents_tlp ON incidents(tlp, started_ms);

-- Named recipient outlets (RED, and extra AMBER readers).
CREATE TABLE incident_recipients (
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    outlet_id INTEGER NOT NULL REFERENCES outlets(id),
    PRIMARY KEY (incident_id, outlet_id)
);
CREATE INDEX incident_recipients_outlet ON incident_recipients(outlet_id);

CREATE TABLE incident_targets (
    id INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    kind TEXT NOT NULL,
    platform TEXT,
    value TEXT NOT NULL
);
CREATE INDEX incident_targets_incident ON incident_targets(incident_id);

CREATE TABLE incident_updates (
    id INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    author TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    new_status TEXT
);
CREATE INDEX incident_updates_incident ON incident_updates(incident_id, created_ms);

-- One row per distinct observable across the whole task force.
CREATE TABLE indicators (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    UNIQUE (kind, value)
);

CREATE TABLE sightings (
    id INTEGER PRIMARY KEY,
    indicator_id INTEGER NOT NULL REFERENCES indicators(id),
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    UNIQUE (incident_id, indicator_id)
);
CREATE INDEX sightings_indicator ON sightings(indicator_id);

CREATE TABLE attachments (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    data BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);

CREATE TABLE incident_attachments (
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    sha256 TEXT NOT NULL REFERENCES attachments(sha256),
    name TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    PRIMARY KEY (incident_id, sha256)
);

-- Chain of custody: who added and who read each attachment; hash-chained, append-only.
CREATE TABLE custody_log (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL,
    incident_id INTEGER NOT NULL,
    outlet_id INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    chain TEXT NOT NULL
);
CREATE INDEX custody_log_sha ON custody_log(sha256, id);

CREATE TABLE publications (
    id INTEGER PRIMARY KEY,
    outlet_id INTEGER NOT NULL REFERENCES outlets(id),
    url TEXT NOT NULL,
    title TEXT NOT NULL,
    published_ms INTEGER NOT NULL,
    tags TEXT NOT NULL,
    UNIQUE (outlet_id, url)
);
CREATE INDEX publications_time ON publications(outlet_id, published_ms);

-- Every change: who, when, what. Append-only (triggers below refuse UPDATE and DELETE).
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    outlet_id INTEGER,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_outlet ON audit_log(outlet_id, id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER custody_log_no_update BEFORE UPDATE ON custody_log
BEGIN SELECT RAISE(ABORT, 'custody_log is append-only'); END;
CREATE TRIGGER custody_log_no_delete BEFORE DELETE ON custody_log
BEGIN SELECT RAISE(ABORT, 'custody_log is append-only'); END;
CREATE TRIGGER attachments_no_update BEFORE UPDATE ON attachments
BEGIN SELECT RAISE(ABORT, 'attachments are never modified'); END;
