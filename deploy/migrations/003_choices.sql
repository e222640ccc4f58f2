-- Customer choice loop (issue 6): scoring weights per segment (history), rolling analytics,
-- alerts and customer segments. Written by agents/choices.py; read by `loopwise choices
-- report`. `deployment` is the topic prefix of the writing deployment, so that several
-- deployments (or test runs) can share one database; segment names are global.

-- Every published weights.scoring version of a segment (replays add no rows).
CREATE TABLE IF NOT EXISTS choice_scoring_weights (
    deployment      text NOT NULL,
    segment         text NOT NULL,
    version         bigint NOT NULL,
    weights         jsonb NOT NULL,            -- factor -> published weight
    confidence      double precision NOT NULL,
    sample_size     bigint NOT NULL,           -- sessions behind the model
    no_choice       bigint NOT NULL,           -- of which ended without a choice
    applied         boolean NOT NULL,
    is_default      boolean NOT NULL,
    reason          text NOT NULL,             -- learned, below_min_sample_size, ...
    learned_weights jsonb,                     -- mapped from the model even when not applied
    standard_errors jsonb,
    coefficients    jsonb NOT NULL,            -- utility coefficients (posterior mean)
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, segment, version)
);

-- Latest rolling-window analytics of a segment (upsert guarded by version).
CREATE TABLE IF NOT EXISTS choice_segment_stats (
    deployment      text NOT NULL,
    segment         text NOT NULL,
    version         bigint NOT NULL,
    weights_version bigint NOT NULL,
    window_s        double precision NOT NULL,
    event_time_ms   bigint NOT NULL,           -- newest session time seen (window end)
    summary         jsonb NOT NULL,            -- per complexity and "all"
    confidence      double precision NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, segment)
);

-- Event-time buckets of the analytics, per segment and complexity (absolute counters,
-- upsert guarded by version): any window can be recomputed from them.
CREATE TABLE IF NOT EXISTS choice_analytics_buckets (
    deployment            text NOT NULL,
    segment               text NOT NULL,
    complexity            text NOT NULL,
    bucket_start_ms       bigint NOT NULL,
    bucket_s              double precision NOT NULL,
    version               bigint NOT NULL,
    confidence            double precision,     -- learning confidence when it was newest
    sessions              double precision NOT NULL,
    conversions           double precision NOT NULL,
    rank_sum              double precision NOT NULL,
    satisfaction_sum      double precision NOT NULL,
    satisfaction_n        double precision NOT NULL,
    decision_time_sum     double precision NOT NULL,
    decision_time_n       double precision NOT NULL,
    abandoned             double precision NOT NULL,
    interactions          double precision NOT NULL,
    time_spent_sum        double precision NOT NULL,
    helpful_sum           double precision NOT NULL,
    helpful_n             double precision NOT NULL,
    viewed                double precision NOT NULL,
    expanded              double precision NOT NULL,
    compared              double precision NOT NULL,
    contacted             double precision NOT NULL,
    detailed_explanations double precision NOT NULL,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, segment, complexity, bucket_start_ms)
);

-- Alerts of the choice loop (deterministic event ids: a replayed alert adds no row).
CREATE TABLE IF NOT EXISTS choice_alerts (
    deployment       text NOT NULL,
    event_id         text NOT NULL,
    segment          text NOT NULL,
    metric           text NOT NULL,
    severity         text NOT NULL,
    escalation_level integer NOT NULL,
    value            double precision NOT NULL,
    threshold        double precision NOT NULL,
    message          text NOT NULL,
    dimensions       jsonb NOT NULL,
    event_time_ms    bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, event_id)
);
CREATE INDEX IF NOT EXISTS choice_alerts_deployment_idx
    ON choice_alerts (deployment, created_at);

-- Latest customer segment (upsert guarded by version).
CREATE TABLE IF NOT EXISTS customer_segments (
    deployment       text NOT NULL,
    customer_id      text NOT NULL,
    segment          text NOT NULL,
    previous_segment text,
    rule             text NOT NULL,
    evidence         text NOT NULL,
    sessions         bigint NOT NULL,
    choices          bigint NOT NULL,
    version          bigint NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, customer_id)
);
CREATE INDEX IF NOT EXISTS customer_segments_segment_idx
    ON customer_segments (deployment, segment);
