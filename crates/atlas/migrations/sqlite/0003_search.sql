-- Full-text search over incidents (FTS5, external content: the text stays in `incidents.search`).
-- unicode61 folds case for Cyrillic and Latin alike, which SQLite's LIKE does not.
CREATE VIRTUAL TABLE incident_search USING fts5(
    search,
    content = 'incidents',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO incident_search (incident_search) VALUES ('rebuild');

CREATE TRIGGER incident_search_insert AFTER INSERT ON incidents BEGIN
    INSERT INTO incident_search (rowid, search) VALUES (new.id, new.search);
END;
CREATE TRIGGER incident_search_delete AFTER DELETE ON incidents BEGIN
    INSERT INTO incident_search (incident_search, rowid, search) VALUES ('delete', old.id, old.search);
END;
CREATE TRIGGER incident_search_update AFTER UPDATE OF search ON incidents BEGIN
    INSERT INTO incident_search (incident_search, rowid, search) VALUES ('delete', old.id, old.search);
    INSERT INTO incident_search (rowid, search) VALUES (new.id, new.search);
END;
