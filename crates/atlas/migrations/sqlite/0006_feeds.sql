-- RSS/Atom feeds of an outlet, polled in the background into `publications`.
-- One row per (outlet, URL); the poll status is shown in the outlet's settings.
CREATE TABLE feeds (
    id INTEGER PRIMARY KEY,
    outlet_id INTEGER NOT NULL REFERENCES outlets(id),
    url TEXT NOT NULL,
    added_by TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    -- Validators of the last good answer, sent back as If-None-Match / If-Modified-Since.
    etag TEXT NOT NULL DEFAULT '',
    last_modified TEXT NOT NULL DEFAULT '',
    -- 0 until the first poll.
    last_poll_ms INTEGER NOT NULL DEFAULT 0,
    last_ok_ms INTEGER NOT NULL DEFAULT 0,
    -- '' when the last poll worked.
    last_error TEXT NOT NULL DEFAULT '',
    -- Publications the last successful poll added.
    last_added INTEGER NOT NULL DEFAULT 0,
    next_poll_ms INTEGER NOT NULL DEFAULT 0,
    UNIQUE (outlet_id, url)
);
CREATE INDEX feeds_due ON feeds(next_poll_ms);
