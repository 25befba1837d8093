-- gridhub schema, version 5: what the analysis reads. Applied to a version-4 database.

-- An order's point, cause and reopenings, in columns the analysis scans without reading JSON.
ALTER TABLE orders ADD COLUMN lat REAL;
ALTER TABLE orders ADD COLUMN lon REAL;
ALTER TABLE orders ADD COLUMN cause TEXT;
ALTER TABLE orders ADD COLUMN reopened INTEGER NOT NULL DEFAULT 0;
-- Ever supervised: "on time" for the analysis, which a reopening's new round does not reset.
ALTER TABLE orders ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
-- A category over a window (the analysis asks for one at a time) without scanning the others.
-- Neither column changes after an order is taken in, so transitions never move its entry.
CREATE INDEX orders_category ON orders(category, created_at);
-- Orders stored before this version: the point from the create event (which holds the whole new
-- order), reopenings from the unsatisfied ratings that caused them.
UPDATE orders SET lat = json_extract(e.data, '$.location.lat'),
                  lon = json_extract(e.data, '$.location.lon')
  FROM order_events e WHERE e.order_id = orders.id AND e.seq = 1;
UPDATE orders SET late = 1 WHERE supervision > 0 OR EXISTS (SELECT 1 FROM order_events e
                                 WHERE e.order_id = orders.id AND e.kind = 'supervise');
UPDATE orders SET reopened = (SELECT COUNT(*) FROM order_events e
                               WHERE e.order_id = orders.id AND e.kind = 'rate'
                                 AND json_extract(e.data, '$.satisfied') = 0);

-- The registry of named sites (squares, markets, drains, …) requests are matched to by distance.
-- `ref`: the caller's own id for a site, so loading a registry twice changes nothing.
CREATE TABLE sites (
  id         INTEGER PRIMARY KEY,
  kind       TEXT    NOT NULL,
  name       TEXT    NOT NULL,
  node       TEXT    NOT NULL,   -- the org node responsible for it
  node_pre   INTEGER NOT NULL,
  lat        REAL    NOT NULL,
  lon        REAL    NOT NULL,
  radius_m   REAL    NOT NULL,
  ref        TEXT    UNIQUE,
  created_at INTEGER NOT NULL
);
CREATE INDEX sites_node ON sites(node_pre);

-- What the center did about a hotspot (what, where, when): its sites (a JSON array of site ids;
-- empty: the node's whole subtree), the category it targets, the order that pushed it to the
-- responsible node and the requests that made the hotspot. `at`, when it took effect, is NULL
-- until known: then the task's closing time counts.
CREATE TABLE interventions (
  id         INTEGER PRIMARY KEY,
  title      TEXT    NOT NULL,
  category   TEXT    NOT NULL,
  node       TEXT    NOT NULL,
  node_pre   INTEGER NOT NULL,
  sites      TEXT    NOT NULL,
  at         INTEGER,
  order_id   INTEGER,
  evidence   TEXT    NOT NULL,
  created_by TEXT    NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX interventions_node ON interventions(node_pre);
