-- gridhub schema, version 1. Applied once to a new database (PRAGMA user_version = 0).

CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per work order: its present state, in indexed columns for filters and statistics.
-- The history (order_events) is the source of truth; the whole order is written as JSON only
-- when it is published and archived, for the public view and for reading closed orders.
CREATE TABLE orders (
  id          INTEGER PRIMARY KEY,
  state       TEXT    NOT NULL,
  category    TEXT    NOT NULL,
  priority    TEXT    NOT NULL,
  source      TEXT    NOT NULL,
  node        TEXT    NOT NULL,   -- where the problem is (an org node id)
  node_pre    INTEGER NOT NULL,   -- that node's preorder index: a subtree is a range
  holder      TEXT    NOT NULL,
  intake      TEXT    NOT NULL,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  due_at      INTEGER NOT NULL,
  closed_at   INTEGER,
  supervision INTEGER NOT NULL,
  score       INTEGER,
  satisfied   INTEGER,
  version     INTEGER NOT NULL,
  idem_key    TEXT UNIQUE,
  idem_hash   TEXT,
  doc         TEXT
);
-- No index on state: every transition changes it, and moving the entry cost 15 % of the
-- writer's throughput in the year replay; filters on state run within a node_pre range.
CREATE INDEX orders_node    ON orders(node_pre);
CREATE INDEX orders_created ON orders(created_at);

-- Append-only history of every order; the create event holds the whole new order. Rows are
-- appended in commit order (rowid), which keeps inserts sequential on disk.
CREATE TABLE order_events (
  id       INTEGER PRIMARY KEY,
  order_id INTEGER NOT NULL,
  seq      INTEGER NOT NULL,
  at       INTEGER NOT NULL,
  actor    TEXT    NOT NULL,
  kind     TEXT    NOT NULL,
  data     TEXT    NOT NULL
);
CREATE UNIQUE INDEX order_events_order ON order_events(order_id, seq);

-- Each terminal's durable outbox: messages in sequence, replayed on resume. Appended in commit
-- order; the index finds one terminal's messages.
CREATE TABLE outbox (
  id       INTEGER PRIMARY KEY,
  endpoint TEXT    NOT NULL,
  seq      INTEGER NOT NULL,
  at       INTEGER NOT NULL,
  kind     TEXT    NOT NULL,
  ref      INTEGER,
  payload  TEXT    NOT NULL
);
CREATE UNIQUE INDEX outbox_endpoint ON outbox(endpoint, seq);

-- The highest sequence each terminal has acknowledged (delivered).
CREATE TABLE acks (
  endpoint TEXT PRIMARY KEY,
  seq      INTEGER NOT NULL,
  at       INTEGER NOT NULL
) WITHOUT ROWID;

-- Read receipts: a terminal opened an order, notice or campaign task.
CREATE TABLE reads (
  kind     TEXT    NOT NULL,
  ref      INTEGER NOT NULL,
  endpoint TEXT    NOT NULL,
  at       INTEGER NOT NULL,
  PRIMARY KEY (kind, ref, endpoint)
) WITHOUT ROWID;

-- Notices: one message to every terminal of chosen tiers in a subtree. Each recipient's copy is
-- an outbox message; its sequence here tells whether it was delivered (acknowledged).
CREATE TABLE notices (
  id         INTEGER PRIMARY KEY,
  sender     TEXT    NOT NULL,
  node       TEXT    NOT NULL,
  tiers      TEXT    NOT NULL,
  title      TEXT    NOT NULL,
  body       TEXT    NOT NULL,
  created_at INTEGER NOT NULL,
  recipients INTEGER NOT NULL
);
CREATE TABLE notice_recipients (
  notice_id INTEGER NOT NULL,
  endpoint  TEXT    NOT NULL,
  seq       INTEGER NOT NULL,
  PRIMARY KEY (notice_id, endpoint)
) WITHOUT ROWID;

-- Campaigns: one task to every worker (or chosen tiers) of a subtree, and the records they send
-- back, one per key (e.g. a household): a later record for the same key replaces the earlier.
CREATE TABLE campaigns (
  id           INTEGER PRIMARY KEY,
  sender       TEXT    NOT NULL,
  node         TEXT    NOT NULL,
  tiers        TEXT    NOT NULL,
  title        TEXT    NOT NULL,
  instructions TEXT    NOT NULL,
  created_at   INTEGER NOT NULL,
  due_at       INTEGER,
  closed_at    INTEGER,
  recipients   INTEGER NOT NULL
);
CREATE TABLE campaign_records (
  campaign_id INTEGER NOT NULL,
  key         TEXT    NOT NULL,
  worker      TEXT    NOT NULL,
  outcome     TEXT    NOT NULL,
  data        TEXT,
  at          INTEGER NOT NULL,
  PRIMARY KEY (campaign_id, key)
) WITHOUT ROWID;
CREATE TABLE campaign_done (
  campaign_id INTEGER NOT NULL,
  worker      TEXT    NOT NULL,
  at          INTEGER NOT NULL,
  PRIMARY KEY (campaign_id, worker)
) WITHOUT ROWID;
