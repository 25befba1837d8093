-- gridhub schema, version 3: photos attached to orders. Applied to a version-2 database.

-- One row per photo. The same bytes attached twice to one order are one photo (a retried
-- upload), hence the unique hash.
CREATE TABLE attachments (
  id           INTEGER PRIMARY KEY,
  order_id     INTEGER NOT NULL,
  by           TEXT    NOT NULL,
  content_type TEXT    NOT NULL,
  bytes        INTEGER NOT NULL,
  sha256       TEXT    NOT NULL,
  at           INTEGER NOT NULL,
  data         BLOB    NOT NULL,
  UNIQUE (order_id, sha256)
);
