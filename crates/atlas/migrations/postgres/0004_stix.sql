-- STIX 2.1 / TAXII 2.1 (version 4, PostgreSQL). Never edit once released: add a new migration instead.

-- Outlets the task force trusts to write through TAXII (set with `qalqan atlas outlet trust`).
ALTER TABLE outlets ADD COLUMN taxii_write BIGINT NOT NULL DEFAULT 0;

-- When a sighting row last changed (server time): the TAXII `date_added` of the objects made
-- from it, so a partner polling with `added_after` never misses a late sighting whose
-- first/last seen times lie in the past. 0 for rows written before this migration.
ALTER TABLE sightings ADD COLUMN updated_ms BIGINT NOT NULL DEFAULT 0;

-- TAXII status resources of POSTed envelopes, readable by the posting outlet. Short-lived (not
-- part of backups); rows older than a day are removed as new ones are written.
CREATE TABLE taxii_status (
    id TEXT PRIMARY KEY,
    outlet_id BIGINT NOT NULL REFERENCES outlets(id),
    created_ms BIGINT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX taxii_status_created ON taxii_status(created_ms);
