-- gridhub schema, version 2: call records. Applied to a version-1 database.

-- One row per call attempt, written when it is placed, updated when it is answered and when it
-- ends. `*_pre` are the parties' preorder indexes: a subtree is a range.
CREATE TABLE calls (
  id          INTEGER PRIMARY KEY,
  caller      TEXT    NOT NULL,
  caller_pre  INTEGER NOT NULL,
  callee      TEXT    NOT NULL,
  callee_pre  INTEGER NOT NULL,
  media       TEXT    NOT NULL,
  created_at  INTEGER NOT NULL,
  ringing_at  INTEGER,
  answered_at INTEGER,
  ended_at    INTEGER,
  duration_ms INTEGER,
  outcome     TEXT,               -- NULL while the call lasts
  reason      TEXT
);
CREATE INDEX calls_caller  ON calls(caller_pre);
CREATE INDEX calls_callee  ON calls(callee_pre);
CREATE INDEX calls_created ON calls(created_at);
