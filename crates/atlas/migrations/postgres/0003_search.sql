-- Full-text search over incidents: a GIN index on the words of `incidents.search`. The 'simple'
-- configuration lower-cases and splits words without language rules, the same for ru, kk and en.
CREATE INDEX incidents_search_words ON incidents USING GIN (to_tsvector('simple', search));
