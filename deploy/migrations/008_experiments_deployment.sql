-- Experiments belong to a deployment (its topic prefix, LOOPWISE_TOPIC_PREFIX), like the
-- insights rows (004): the insights report of one deployment lists only its own experiments
-- when several deployments share a database. streams.experiments_store.create fills it;
-- rows created before this migration have none (NULL) and appear in no deployment's report.
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS deployment text;
CREATE INDEX IF NOT EXISTS experiments_deployment_idx ON experiments (deployment);
