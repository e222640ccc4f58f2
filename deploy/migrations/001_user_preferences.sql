-- Latest preference vector per user; written by the preferences agent with a version guard.
CREATE TABLE IF NOT EXISTS user_preferences (
    user_id      text PRIMARY KEY,
    vector       real[] NOT NULL,
    version      bigint NOT NULL,
    segment      text NOT NULL,
    interactions bigint NOT NULL,
    source_ts    bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
