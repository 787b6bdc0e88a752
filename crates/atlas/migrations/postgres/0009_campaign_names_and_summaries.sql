-- Campaign descriptions and publication summaries (version 9, PostgreSQL). Never edit once
-- released: add a new migration instead. See the SQLite file for what each column means.

ALTER TABLE campaigns ADD COLUMN description TEXT NOT NULL DEFAULT '';

ALTER TABLE publications ADD COLUMN summary TEXT NOT NULL DEFAULT '';
