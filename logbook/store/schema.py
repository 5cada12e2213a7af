"""The DuckDB schema of the derived store.

The store is rebuilt from the event logs, so a schema change needs no migration:
a store whose version differs is deleted and re-ingested (see store.py).
Wall times are Unix seconds (DOUBLE); steps are BIGINT; metric rows are narrow.
"""

# 8: segment_roles and segments.meta (issue 17); 6: kept_results; 5: telemetry as series (telemetry_blocks,
# `telemetry` a view); 4: telemetry_tiles
SCHEMA_VERSION = 8
TILE_SHIFT = 8  # metric_tiles cover 2**8 = 256 steps each
# telemetry_tiles widths in seconds (docs/architecture.md, "Telemetry tiles"): a chart of W seconds in B buckets
# reads the widest level no wider than W/B, so it reads at most ~64 x B tiles per series however long the run.
TELEMETRY_TILES = (64, 4096)
# A telemetry block (telemetry_blocks) covers at most one aligned span of this many seconds, so a zoomed read
# unnests only the blocks its window touches (their t_lo/t_hi prune the rest).
TELEMETRY_BLOCK_SECONDS = 4096

DDL = """
CREATE TABLE schema_version (version INTEGER NOT NULL);

CREATE TABLE runs (
    run_id      VARCHAR PRIMARY KEY,   -- the run directory's name
    path        VARCHAR,               -- where it was ingested from
    name        VARCHAR                -- display name from the newest segment header
);

CREATE TABLE segments (
    run_id      VARCHAR NOT NULL,
    segment_id  VARCHAR NOT NULL,
    parent_id   VARCHAR,               -- segment this launch resumed from; NULL for a root
    resume_step BIGINT,                -- checkpoint step it resumed from; NULL for a fresh start
    reason      VARCHAR,               -- why this launch happened
    start_time  DOUBLE,
    world_size  INTEGER,
    host        VARCHAR,
    config      JSON,
    config_diff JSON,                  -- {"dotted.key": [old, new]} against the parent
    has_header  BOOLEAN,               -- false when only rank logs were found
    meta        JSON,                  -- the header's {"tags": [..], "notes", "group", "job_type"} (checked text)
    PRIMARY KEY (run_id, segment_id)
);

CREATE TABLE rank_logs (
    run_id      VARCHAR NOT NULL,
    segment_id  VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    host        VARCHAR,
    pid         INTEGER,
    local_rank  INTEGER,
    world_size  INTEGER,
    open_time   DOUBLE,
    close_time  DOUBLE,                -- NULL until a close record is read
    end_reason  VARCHAR,               -- completed | crashed | stopped | rewound; NULL = no close record
    exit_code   INTEGER,
    error       VARCHAR,
    first_step  BIGINT,
    last_step   BIGINT,
    last_write  DOUBLE,                -- log file mtime at the last ingest (heartbeat)
    dropped_records BIGINT,
    write_errors    BIGINT,
    PRIMARY KEY (run_id, segment_id, rank)
);

CREATE TABLE metrics (
    run_id      VARCHAR NOT NULL,
    segment_id  VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    step        BIGINT NOT NULL,
    name        VARCHAR NOT NULL,
    value       DOUBLE,                -- NaN and +-Inf stored as such
    wall_time   DOUBLE
);

-- M4 summary of every 256-step tile of every series, kept in step with `metrics` by ingest (same
-- transaction). A downsampled query over millions of points reads these candidates instead of
-- the raw rows; every candidate is a real point, so no extreme and no NaN can be lost.
CREATE TABLE metric_tiles (
    run_id      VARCHAR NOT NULL,
    segment_id  VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    name        VARCHAR NOT NULL,
    tile        BIGINT NOT NULL,       -- step >> 8
    n           BIGINT NOT NULL,       -- points in the tile
    p_first     STRUCT(step BIGINT, value DOUBLE),   -- lowest step
    p_last      STRUCT(step BIGINT, value DOUBLE),   -- highest step
    p_min       STRUCT(step BIGINT, value DOUBLE),   -- lowest non-NaN value (NULL if all NaN)
    p_max       STRUCT(step BIGINT, value DOUBLE),   -- highest non-NaN value
    p_nan       STRUCT(step BIGINT, value DOUBLE),   -- first NaN (NULL if none)
    PRIMARY KEY (run_id, segment_id, rank, name, tile)
);

CREATE TABLE events (
    run_id      VARCHAR NOT NULL,
    segment_id  VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    step        BIGINT,
    wall_time   DOUBLE,
    kind        VARCHAR NOT NULL,
    fields      JSON
);

-- Raw telemetry, stored as series: one row per device, name set (`telemetry_names`) and ingested chunk,
-- holding that device's ticks in time order and, name by name, their values. Narrow rows (run, segment,
-- rank, device, step, time, name, value per point) cost ~19 B and ~1 us each to store; here the keys are
-- stored once per block, a tick's time and step once for all its names, and each name's values sit
-- together, so DuckDB's ALP/bitpacking packs a series of readings at the sensor's resolution into a byte
-- or two. Readers use the view `telemetry` (one row per point: the table it replaced in schema 5); a read of
-- a time window uses `telemetry_spans` (the same rows plus their block's span) and adds
-- `block_t_hi >= lo AND block_t_lo <= hi`, which DuckDB pushes down to the blocks.
CREATE TABLE telemetry_names (
    names_id    INTEGER PRIMARY KEY,
    names       VARCHAR[] NOT NULL     -- a block's names, in the order of its values
);

CREATE TABLE telemetry_blocks (
    run_id      VARCHAR NOT NULL,
    segment_id  VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    device      VARCHAR NOT NULL,      -- "gpu0", "gpu1", ... (NVML index) or "cpu"
    names_id    INTEGER NOT NULL,
    t_lo        DOUBLE,                -- the first and last finite wall time (NULL if none): for pruning
    t_hi        DOUBLE,
    wall_times  DOUBLE[] NOT NULL,     -- n ticks, in time order
    steps       BIGINT[] NOT NULL,     -- n: the step at each tick, or NULL
    vals        DOUBLE[] NOT NULL      -- n x len(names), name-major; NULL: no sample (not a NaN one)
);

CREATE VIEW telemetry_spans AS
SELECT run_id, segment_id, rank, device, step, wall_time, name, value, block_t_lo, block_t_hi
FROM (SELECT b.run_id, b.segment_id, b.rank, b.device, b.t_lo AS block_t_lo, b.t_hi AS block_t_hi,
             unnest(flatten(list_transform(n.names, lambda x: b.steps))) AS step,
             unnest(flatten(list_transform(n.names, lambda x: b.wall_times))) AS wall_time,
             unnest(flatten(list_transform(n.names, lambda x: list_transform(b.wall_times, lambda t: x)))) AS name,
             unnest(b.vals) AS value
      FROM telemetry_blocks b JOIN telemetry_names n USING (names_id))
WHERE value IS NOT NULL;

CREATE VIEW telemetry AS
SELECT run_id, segment_id, rank, device, step, wall_time, name, value FROM telemetry_spans;

-- M4 summary of telemetry per device, name and wall-time tile, at each width of TELEMETRY_TILES (64 s and
-- 4096 s), kept in step with `telemetry` by ingest (same transaction). A chart of a month at 1 Hz reads
-- these candidates instead of billions of rows; every candidate is a real sample, so no spike is lost.
CREATE TABLE telemetry_tiles (
    run_id      VARCHAR NOT NULL,
    segment_id  VARCHAR NOT NULL,
    rank        INTEGER NOT NULL,
    device      VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,
    width       INTEGER NOT NULL,      -- seconds per tile: 64 or 4096
    tile        BIGINT NOT NULL,       -- floor(wall_time / width)
    n           BIGINT NOT NULL,       -- samples in the tile
    p_first     STRUCT(t DOUBLE, step BIGINT, value DOUBLE),   -- earliest sample
    p_last      STRUCT(t DOUBLE, step BIGINT, value DOUBLE),   -- latest sample
    p_min       STRUCT(t DOUBLE, step BIGINT, value DOUBLE),   -- lowest non-NaN value (NULL if all NaN)
    p_max       STRUCT(t DOUBLE, step BIGINT, value DOUBLE),   -- highest non-NaN value
    p_nan       STRUCT(t DOUBLE, step BIGINT, value DOUBLE),   -- first NaN (NULL if none)
    PRIMARY KEY (run_id, segment_id, rank, device, name, width, tile)
);

CREATE TABLE annotation_ops (          -- audit trail: every create, edit and delete
    run_id        VARCHAR NOT NULL,
    annotation_id VARCHAR NOT NULL,
    seq           BIGINT NOT NULL,     -- line number in annotations.jsonl
    op            VARCHAR NOT NULL,    -- create | edit | delete
    wall_time     DOUBLE,
    step          BIGINT,
    step_end      BIGINT,
    kind          VARCHAR,
    text          VARCHAR,
    author        VARCHAR
);

CREATE VIEW annotations AS
SELECT run_id, annotation_id, step, step_end, kind, text, author, wall_time AS updated_time,
       (SELECT min(o.wall_time) FROM annotation_ops o
         WHERE o.run_id = a.run_id AND o.annotation_id = a.annotation_id) AS created_time
FROM annotation_ops a
WHERE op <> 'delete'
QUALIFY row_number() OVER (PARTITION BY run_id, annotation_id ORDER BY seq DESC) = 1
    AND NOT EXISTS (SELECT 1 FROM annotation_ops d WHERE d.run_id = a.run_id
                    AND d.annotation_id = a.annotation_id AND d.op = 'delete');

CREATE TABLE intervention_ops (        -- requests from the dashboard/CLI and their outcomes
    run_id          VARCHAR NOT NULL,
    intervention_id VARCHAR NOT NULL,
    seq             BIGINT NOT NULL,
    op              VARCHAR NOT NULL,  -- request | applied | rejected
    wall_time       DOUBLE,
    action          VARCHAR,
    params          JSON,
    step            BIGINT,            -- step at which it was applied
    detail          VARCHAR,           -- what the run did, or why it rejected the request
    author          VARCHAR,
    note            VARCHAR            -- the requester's reason, as text
);

CREATE VIEW interventions AS
SELECT r.run_id, r.intervention_id, r.action, r.params, r.note, r.author, r.wall_time AS requested_time,
       coalesce(s.op, 'pending') AS status, s.step AS applied_step, s.detail, s.wall_time AS resolved_time
FROM intervention_ops r
LEFT JOIN (SELECT * FROM intervention_ops WHERE op <> 'request'
           QUALIFY row_number() OVER (PARTITION BY run_id, intervention_id ORDER BY seq DESC) = 1) s
  ON s.run_id = r.run_id AND s.intervention_id = r.intervention_id
WHERE r.op = 'request';

-- the metric roles a segment's header declares (midflight.init(..., roles=...); logbook.roles): role -> the run's name
CREATE TABLE segment_roles (
    run_id      VARCHAR NOT NULL,
    segment_id  VARCHAR NOT NULL,
    role        VARCHAR NOT NULL,      -- a role of logbook.roles.ROLES ("loss", "lr", ...)
    metric      VARCHAR NOT NULL,      -- the metric name that plays it in this run
    PRIMARY KEY (run_id, segment_id, role)
);

-- results worked out from the logs (incidents, energy), kept with the ingest watermark they were computed at
-- (logbook.store.kept): a result whose watermark still matches is not computed again
CREATE TABLE kept_results (
    run_id      VARCHAR NOT NULL,
    what        VARCHAR NOT NULL,      -- "incidents", "energy/<segment>", ...
    watermark   VARCHAR NOT NULL,      -- kept.watermark() of the run or segment when it was computed
    value       VARCHAR NOT NULL,      -- Python json text (NaN and Infinity allowed)
    PRIMARY KEY (run_id, what)
);

CREATE TABLE ingest_files (            -- exactly-once bookkeeping, updated in the same transaction as the rows
    run_id      VARCHAR NOT NULL,
    rel_path    VARCHAR NOT NULL,      -- path inside the run directory
    byte_offset BIGINT NOT NULL,       -- everything before this offset is ingested
    lines       BIGINT NOT NULL,       -- complete lines consumed
    malformed   BIGINT NOT NULL,       -- lines skipped as unreadable
    size        BIGINT,
    mtime       DOUBLE,
    examples    JSON,                  -- a few malformed lines: [[line_no, message, snippet], ...]
    PRIMARY KEY (run_id, rel_path)
);
"""
