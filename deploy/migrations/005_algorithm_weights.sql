-- Latest published weights.algorithms event per user segment (version-guarded upsert).
CREATE TABLE IF NOT EXISTS algorithm_weights (
    segment    text PRIMARY KEY,
    version    bigint NOT NULL,
    payload    jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
