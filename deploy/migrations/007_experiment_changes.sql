-- Operators' changes to a running experiment's definition (issue 5): today traffic ramps
-- (`loopwise experiments ramp`, POST /experiments/{id}/ramp). One row per change, written
-- in the same transaction as the definition's new revision, so the log and the definition
-- never disagree; `before` / `after` hold only the changed fields.
CREATE TABLE IF NOT EXISTS experiment_changes (
    change_id     bigserial PRIMARY KEY,
    experiment_id text NOT NULL REFERENCES experiments (experiment_id) ON DELETE CASCADE,
    revision      integer NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('traffic')),
    before        jsonb NOT NULL,
    after         jsonb NOT NULL,
    reason        text,
    changed_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (experiment_id, revision)
);
