-- STIX export keyset (version 8, PostgreSQL). Never edit once released: add a new migration instead.

-- The STIX export (`stix.rs`) reads each selected incident's timeline updates in row-id order
-- and resumes a page after an (incident, update) cursor. `incident_updates_incident` is ordered
-- by time, so it cannot resume inside an incident by row id. Sightings need no new index: the
-- export walks them by (incident_id, indicator_id), the order of their UNIQUE constraint.
CREATE INDEX incident_updates_keyset ON incident_updates(incident_id, id);
