-- Insights and improvement (issue 7): windowed analytics, alerts, insights, optimization
-- actions and goals, improvement tickets, scheduled jobs and reports.
--
-- Every row belongs to one deployment (its topic prefix, LOOPWISE_TOPIC_PREFIX), so several
-- deployments (tests, the demo, staging) can share a database without seeing each other.

-- Mergeable summaries of one (component, window), written by the insights agent after every
-- batch that touched the window (upsert guarded by the window's version = events applied).
CREATE TABLE IF NOT EXISTS insight_windows (
    deployment   text NOT NULL,
    component    text NOT NULL,
    window_start bigint NOT NULL,  -- epoch ms, event time
    window_end   bigint NOT NULL,
    version      bigint NOT NULL,
    stats        jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, component, window_start)
);
CREATE INDEX IF NOT EXISTS insight_windows_start_idx ON insight_windows (deployment, window_start);

-- One row per insight (stable id); every change of direction, priority or status is a new
-- revision, and an older revision never overwrites a newer one.
CREATE TABLE IF NOT EXISTS insights (
    deployment         text NOT NULL,
    insight_id         text NOT NULL,
    revision           integer NOT NULL,
    subject            text NOT NULL,
    component          text NOT NULL,
    kind               text NOT NULL,
    metric             text NOT NULL,
    grp                text NOT NULL,
    direction          text NOT NULL,
    title              text NOT NULL,
    evidence           jsonb NOT NULL,
    confidence         double precision NOT NULL,
    priority           text NOT NULL CHECK (priority IN ('high', 'medium', 'low')),
    recommended_action text NOT NULL,
    action_kind        text,
    action_params      jsonb NOT NULL DEFAULT '{}',
    risk               text,
    status             text NOT NULL CHECK (status IN ('active', 'resolved')),
    first_seen         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    resolved_at        timestamptz,
    PRIMARY KEY (deployment, insight_id)
);
CREATE INDEX IF NOT EXISTS insights_status_idx ON insights (deployment, status, priority);

-- Every alert event (firing, escalated, resolved, missed run); the event id is
-- deterministic, so a re-sent alert adds no row.
CREATE TABLE IF NOT EXISTS insight_alerts (
    deployment       text NOT NULL,
    event_id         text NOT NULL,
    component        text NOT NULL,
    metric           text NOT NULL,
    severity         text NOT NULL,
    escalation_level integer NOT NULL,
    status           text NOT NULL,
    value            double precision NOT NULL,
    threshold        double precision NOT NULL,
    window_start     bigint,
    message          text NOT NULL,
    raised_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, event_id)
);
CREATE INDEX IF NOT EXISTS insight_alerts_component_idx
    ON insight_alerts (deployment, component, raised_at);

-- Optimization goals: reach `target` on `metric` of `component` ('at_least' / 'at_most')
-- by `deadline`; progress is updated by every optimization cycle.
CREATE TABLE IF NOT EXISTS optimization_goals (
    deployment text NOT NULL,
    goal_id    text NOT NULL,
    component  text NOT NULL,
    metric     text NOT NULL,
    target     double precision NOT NULL,
    direction  text NOT NULL CHECK (direction IN ('at_least', 'at_most')),
    deadline   timestamptz NOT NULL,
    baseline   double precision,
    current    double precision,
    progress   double precision,
    status     text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'achieved', 'missed', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, goal_id)
);

-- Actions chosen by the optimization engine, with their reason; action_id is deterministic
-- (insight, revision, kind), so a repeated cycle or a re-sent action adds no row.
CREATE TABLE IF NOT EXISTS optimization_actions (
    deployment       text NOT NULL,
    action_id        text NOT NULL,
    insight_id       text,
    insight_revision integer,
    goal_id          text,
    target           text NOT NULL,
    kind             text NOT NULL,
    parameters       jsonb NOT NULL,
    reason           text NOT NULL,
    confidence       double precision,
    risk             text,
    strategy         text NOT NULL,
    decided_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, action_id)
);
CREATE INDEX IF NOT EXISTS optimization_actions_insight_idx
    ON optimization_actions (deployment, insight_id);

-- Improvement tickets for high-priority recommendations:
-- open -> in_progress -> implemented -> measured -> closed (closed also from any state).
CREATE TABLE IF NOT EXISTS improvement_tickets (
    deployment         text NOT NULL,
    ticket_id          text NOT NULL,
    insight_id         text NOT NULL,
    component          text NOT NULL,
    metric             text NOT NULL,
    grp                text NOT NULL,
    title              text NOT NULL,
    recommended_action text NOT NULL,
    priority           text NOT NULL,
    status             text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'in_progress', 'implemented', 'measured', 'closed')),
    cost               double precision,
    implemented_at     timestamptz,
    measured_at        timestamptz,
    impact             jsonb,
    history            jsonb NOT NULL DEFAULT '[]',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, ticket_id),
    UNIQUE (deployment, insight_id)
);
CREATE INDEX IF NOT EXISTS improvement_tickets_status_idx
    ON improvement_tickets (deployment, status);

-- Scheduled jobs of the leader (report, ...): last success, retries with back-off.
CREATE TABLE IF NOT EXISTS insight_jobs (
    deployment   text NOT NULL,
    job          text NOT NULL,
    last_success timestamptz,
    last_attempt timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    next_attempt timestamptz,
    missed_runs  integer NOT NULL DEFAULT 0,
    last_error   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, job)
);

-- Generated reports (files under LOOPWISE_REPORT_DIR), archived with a retention.
CREATE TABLE IF NOT EXISTS insight_reports (
    deployment   text NOT NULL,
    report_id    text NOT NULL,
    kind         text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    generated_at timestamptz NOT NULL DEFAULT now(),
    paths        jsonb NOT NULL,
    summary      jsonb NOT NULL,
    PRIMARY KEY (deployment, report_id)
);
