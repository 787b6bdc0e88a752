-- Campaigns across outlets (version 7, SQLite). Never edit once released: add a new migration
-- instead.

-- A group of incidents at different outlets that share indicators, proposed by the correlator
-- (`campaigns::recompute`) and confirmed or rejected by an editor. `members_key` is the SHA-256
-- of the sorted member row ids: a rejected group is never proposed again with the same members.
-- Which members and evidence a reader sees is decided per reader through `campaign_links`
-- joined with the visibility rule, never from this row alone.
CREATE TABLE campaigns (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    members_key TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    decided_by TEXT,
    decided_outlet_id INTEGER REFERENCES outlets(id),
    decided_ms INTEGER
);
CREATE INDEX campaigns_status ON campaigns(status, id);

-- One scored pair of member incidents (a < b) and the evidence they share (canonical JSON).
-- Score in thousandths (0..1000), so both backends store an integer.
CREATE TABLE campaign_links (
    campaign_id INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    a_id INTEGER NOT NULL REFERENCES incidents(id),
    b_id INTEGER NOT NULL REFERENCES incidents(id),
    score INTEGER NOT NULL,
    evidence TEXT NOT NULL,
    PRIMARY KEY (campaign_id, a_id, b_id)
);
CREATE INDEX campaign_links_a ON campaign_links(a_id);
CREATE INDEX campaign_links_b ON campaign_links(b_id);
