"""Insights endpoints: ``GET /insights`` (active insights, PostgreSQL) and
``GET /insights/windows/{component}`` (the analytics windows this worker holds)."""

from __future__ import annotations

from faust.web import Request, Response, View

from agents.insights.agent import DEPLOYMENT, local
from agents.insights.windows import groups_of, window_values
from streams.app import app, postgres


@app.page("/insights")
class InsightsView(View):
    """Active insights of this deployment (PostgreSQL), highest priority first."""

    async def get(self, request: Request) -> Response:
        rows = await postgres.fetch(
            "SELECT insight_id, revision, subject, kind, priority, confidence, title,"
            " recommended_action, evidence, updated_at FROM insights"
            " WHERE deployment = %s AND status = 'active'"
            " ORDER BY CASE priority WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END,"
            " confidence DESC LIMIT 200",
            (DEPLOYMENT,),
        )
        cols = ("insight_id", "revision", "subject", "kind", "priority", "confidence", "title",
                "recommended_action", "evidence", "updated_at")  # fmt: skip
        items = [dict(zip(cols, r, strict=True)) for r in rows]
        for item in items:
            item["updated_at"] = item["updated_at"].isoformat()
        return self.json({"insights": items})


@app.page("/insights/windows/{component}")
class WindowsView(View):
    """The component's windows held by this worker, newest first (404 elsewhere)."""

    async def get(self, request: Request, component: str) -> Response:
        views = sorted(local.windows.get(component, {}).values(), key=lambda w: -w.start)
        if not views:
            return self.json({"component": component, "found": False}, status=404)
        state = local.states.get(component)
        out = []
        for w in views[:48]:
            groups = {
                g: {m: {"value": v, "n": n} for m, (v, n) in window_values(w.stats, g).items()}
                for g in sorted(groups_of(w.stats))
            }
            out.append({"start": w.start, "end": w.end, "groups": groups})
        return self.json(
            {
                "component": component,
                "found": True,
                "evaluated_through": None if state is None else state.evaluated_through,
                "active_insights": [] if state is None else sorted(state.active),
                "windows": out,
            }
        )
