-- The map of attacks (version 5, PostgreSQL). Never edit once released: add a new migration instead.

-- Where an address indicator is: ISO 3166-1 alpha-2 country and AS number from the geo tables
-- (`qalqan-geo`), and its network (the /24 of an IPv4 address, the /48 of an IPv6 address, a
-- CIDR indicator itself). Set when the indicator is first inserted, never by a client; NULL for
-- kinds without a place, and where the geo data knows nothing.
ALTER TABLE indicators ADD COLUMN country TEXT;
ALTER TABLE indicators ADD COLUMN asn BIGINT;
ALTER TABLE indicators ADD COLUMN net TEXT;

-- Per incident, its located indicators by country, by AS and by network: how many, and the sum of their
-- sighting counts (`country` and `asn` of
-- the AS and network tables are the first, by code, of the incident's addresses there). Derived from sightings and indicators: the store rewrites an
-- incident's rows whenever its sightings change, a restore rebuilds them all, and they are not
-- part of backups. The map joins them to incidents filtered by the TLP rule, so they add nothing
-- the rule does not already govern. One row per incident and country (or AS) lets the map count
-- incidents with COUNT(*) over a few rows per incident.
CREATE TABLE incident_countries (
    incident_id BIGINT NOT NULL REFERENCES incidents(id),
    country TEXT NOT NULL,
    indicators BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (incident_id, country)
);
CREATE TABLE incident_asns (
    incident_id BIGINT NOT NULL REFERENCES incidents(id),
    asn BIGINT NOT NULL,
    country TEXT,
    indicators BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (incident_id, asn)
);
CREATE TABLE incident_nets (
    incident_id BIGINT NOT NULL REFERENCES incidents(id),
    net TEXT NOT NULL,
    country TEXT,
    asn BIGINT,
    indicators BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (incident_id, net)
);

-- The map's scans of incidents read only these columns (the TLP rule needs outlet, TLP and id).
CREATE INDEX incidents_map ON incidents(started_ms, outlet_id, tlp, kind, id);
