-- gridhub schema, version 4: command-session records. Applied to a version-3 database.

-- One row per session: written when it opens, again when its commander changes and when it
-- ends. `*_pre` is the center's preorder index: a subtree is a range.
CREATE TABLE sessions (
  id          INTEGER PRIMARY KEY,
  title       TEXT    NOT NULL,
  center      TEXT    NOT NULL,
  center_pre  INTEGER NOT NULL,
  commander   TEXT    NOT NULL,
  created_at  INTEGER NOT NULL,
  ended_at    INTEGER,            -- NULL while the session is live
  end_reason  TEXT,
  duration_ms INTEGER
);
CREATE INDEX sessions_center ON sessions(center_pre);

-- One row per time a member was in a session: from its join to its leaving (NULL while in).
CREATE TABLE session_spans (
  session   INTEGER NOT NULL,
  node      TEXT    NOT NULL,
  node_pre  INTEGER NOT NULL,
  part      TEXT    NOT NULL,
  seat      TEXT    NOT NULL,
  joined_at INTEGER NOT NULL,
  left_at   INTEGER
);
CREATE INDEX session_spans_session ON session_spans(session);
CREATE INDEX session_spans_node ON session_spans(node_pre);

-- One row per published track recorded (when `sessions.record` is on): the file under the
-- data folder, and how much went into it.
CREATE TABLE session_recordings (
  id         INTEGER PRIMARY KEY,
  session    INTEGER NOT NULL,
  node       TEXT    NOT NULL,
  kind       TEXT    NOT NULL,   -- audio (Ogg Opus) or video (IVF VP8)
  path       TEXT    NOT NULL,   -- relative to the data folder
  started_at INTEGER NOT NULL,
  ended_at   INTEGER,
  packets    INTEGER NOT NULL DEFAULT 0,
  bytes      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX session_recordings_session ON session_recordings(session);
