-- Experiments (issue 5): definitions, results (latest + history) and decisions.
--
-- experiments: one row per experiment, written by streams.experiments_store (CLI / HTTP);
-- the experiments agent only moves a running experiment to 'concluded' and records the
-- current allocation weights after a reallocation or rollback (guarded by status).
CREATE TABLE IF NOT EXISTS experiments (
    experiment_id   text PRIMARY KEY,
    definition      jsonb NOT NULL,
    status          text NOT NULL
        CHECK (status IN ('draft', 'running', 'stopped', 'concluded')),
    revision        integer NOT NULL DEFAULT 1,
    current_weights jsonb,
    stop_reason     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    ended_at        timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS experiments_status_idx ON experiments (status);

-- Latest result per experiment (upsert guarded by version).
CREATE TABLE IF NOT EXISTS experiment_results_latest (
    experiment_id text PRIMARY KEY,
    version       bigint NOT NULL,
    result        jsonb NOT NULL,
    computed_at   timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- History of results (at most one per LOOPWISE_EXPERIMENT_HISTORY_INTERVAL_S, plus every
-- result that carried a decision); (experiment_id, version) makes replays no-ops.
CREATE TABLE IF NOT EXISTS experiment_results (
    experiment_id text NOT NULL,
    version       bigint NOT NULL,
    result        jsonb NOT NULL,
    computed_at   timestamptz NOT NULL,
    PRIMARY KEY (experiment_id, version)
);

-- Every decision (stop, rollback, reallocation, SRM investigation) with its evidence;
-- action_id is deterministic, so a replayed decision adds no row.
CREATE TABLE IF NOT EXISTS experiment_decisions (
    action_id      text PRIMARY KEY,
    experiment_id  text NOT NULL,
    kind           text NOT NULL,
    variant        text,
    parameters     jsonb NOT NULL,
    evidence       jsonb NOT NULL,
    reason         text NOT NULL,
    result_version bigint NOT NULL,
    decided_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS experiment_decisions_experiment_idx
    ON experiment_decisions (experiment_id, decided_at);
