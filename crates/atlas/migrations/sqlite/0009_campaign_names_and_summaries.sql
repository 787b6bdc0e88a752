-- Campaign descriptions and publication summaries (version 9, SQLite). Never edit once
-- released: add a new migration instead.

-- What an editor wrote about a campaign (its name is in `name`, editable too); exported as the
-- STIX campaign's `description`. '' when none was given.
ALTER TABLE campaigns ADD COLUMN description TEXT NOT NULL DEFAULT '';

-- A publication's summary (a feed item's summary or description, or the one given by hand), as
-- plain text: markup dropped, whitespace collapsed, bounded (`feeds::MAX_SUMMARY`). "What
-- provokes attacks" takes keywords from it as well as from the title. '' when none.
ALTER TABLE publications ADD COLUMN summary TEXT NOT NULL DEFAULT '';
