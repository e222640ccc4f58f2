"""Worker HTTP endpoints for experiments (faust web views).

=========================================  ==================================================
``GET  /experiments[?status=running]``     definitions with status (newest first)
``POST /experiments``                      create (bearer token; 201, 400, 401, 409, 413)
``GET  /experiments/{id}``                 definition, status, weights, decisions
``POST /experiments/{id}/start``           draft → running (bearer token)
``POST /experiments/{id}/stop``            → stopped (bearer token; optional {"reason"})
``POST /experiments/{id}/ramp``            {"traffic": F, "reason"?}: new traffic fraction of a
                                           draft or running experiment (bearer token)
``GET  /experiments/{id}/results``         latest result: Redis, else PostgreSQL
``GET  /experiments/{id}/assign?unit=U``   the unit's variant (``device``, ``persona``,
                                           ``segment`` are checked against the targeting)
``GET  /state/experiments/{id}``           the agent's table value on this worker (404 elsewhere),
                                           with its number of unit records (a scan: operators' use)
=========================================  ==================================================

Mutating endpoints need ``Authorization: Bearer $LOOPWISE_API_TOKEN``; without a configured
token they are refused. Request bodies above ``LOOPWISE_API_MAX_BODY_BYTES`` get 413.
PostgreSQL is reached through a short-lived connection in a thread (these are operators'
endpoints); ``assign`` caches definitions for two seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from faust.web import Request, Response, View

from agents.experiments import store
from loopwise.web.http import HTTPError, check_token, read_json
from streams.app import app, redis_values, settings

log = logging.getLogger(__name__)
ASSIGN_CACHE_S = 2.0
ASSIGN_CACHE_MAX = 10_000
_assign_cache: dict[str, tuple[float, store.Experiment | None]] = {}


_HTTPError = HTTPError
_check_token = check_token


async def _read_json(request: Request, required: bool = True) -> Any:
    return await read_json(request, required, what="a JSON definition")


async def _db(fn: Callable[[Any], Any]) -> Any:
    try:
        return await asyncio.to_thread(store.with_connection, settings, fn)
    except (store.NotFound, store.Conflict, store.DefinitionError, ValueError):
        raise
    except Exception as exc:  # PostgreSQL unreachable or failing
        log.warning("experiments API: database error: %r", exc)
        raise _HTTPError(503, {"error": f"database unavailable: {type(exc).__name__}"}) from exc


async def _announce(experiment: store.Experiment) -> bool:
    try:
        await asyncio.to_thread(store.announce_sync, settings, experiment, 10.0)
        return True
    except Exception as exc:  # stored; the agent reads PostgreSQL anyway
        log.warning("experiments API: announcement of %s failed: %r", experiment, exc)
        return False


class _ExperimentView(View):
    """Maps the store's exceptions to HTTP answers."""

    async def _run(self, handler: Callable[[], Any]) -> Response:
        try:
            return await handler()
        except _HTTPError as exc:
            return self.json(exc.body, status=exc.status)
        except store.DefinitionError as exc:
            return self.json({"errors": exc.errors}, status=400)
        except store.NotFound as exc:
            return self.json({"error": str(exc.args[0])}, status=404)
        except store.Conflict as exc:
            return self.json({"error": str(exc.args[0])}, status=409)
        except ValueError as exc:
            return self.json({"error": str(exc)}, status=400)


@app.page("/experiments")
class ExperimentsView(_ExperimentView):
    async def get(self, request: Request) -> Response:
        status = request.query.get("status")

        async def handle() -> Response:
            rows = await _db(lambda conn: store.list_experiments(conn, status))
            return self.json({"experiments": [r.to_dict() for r in rows]})

        return await self._run(handle)

    async def post(self, request: Request) -> Response:
        async def handle() -> Response:
            _check_token(request)
            definition = store.validate_definition(await _read_json(request))
            experiment = await _db(
                lambda conn: store.create(conn, definition, settings.topic_prefix)
            )
            announced = await _announce(experiment)
            return self.json({**experiment.to_dict(), "announced": announced}, status=201)

        return await self._run(handle)


async def _get_experiment(experiment_id: str) -> store.Experiment:
    experiment = await _db(lambda conn: store.get(conn, experiment_id))
    if experiment is None:
        raise store.NotFound(f"no experiment {experiment_id!r}")
    return experiment


@app.page("/experiments/{experiment_id}")
class ExperimentView(_ExperimentView):
    async def get(self, request: Request, experiment_id: str) -> Response:
        async def handle() -> Response:
            experiment = await _get_experiment(experiment_id)
            decisions = await _db(lambda conn: store.decisions(conn, experiment_id))
            changes = await _db(lambda conn: store.changes(conn, experiment_id))
            return self.json({**experiment.to_dict(), "decisions": decisions, "changes": changes})

        return await self._run(handle)


class _TransitionView(_ExperimentView):
    to_status = ""

    async def post(self, request: Request, experiment_id: str) -> Response:
        async def handle() -> Response:
            _check_token(request)
            body = await _read_json(request, required=False)
            reason = body.get("reason") if isinstance(body, dict) else None
            if reason is not None and not isinstance(reason, str):
                raise _HTTPError(400, {"errors": ["reason: must be a string"]})
            experiment = await _db(
                lambda conn: store.transition(conn, experiment_id, self.to_status, reason)
            )
            _assign_cache.pop(experiment_id, None)
            announced = await _announce(experiment)
            return self.json({**experiment.to_dict(), "announced": announced})

        return await self._run(handle)


@app.page("/experiments/{experiment_id}/start")
class StartView(_TransitionView):
    to_status = "running"


@app.page("/experiments/{experiment_id}/stop")
class StopView(_TransitionView):
    to_status = "stopped"


@app.page("/experiments/{experiment_id}/ramp")
class RampView(_ExperimentView):
    async def post(self, request: Request, experiment_id: str) -> Response:
        async def handle() -> Response:
            _check_token(request)
            body = await _read_json(request)
            if not isinstance(body, dict) or "traffic" not in body:
                raise _HTTPError(400, {"errors": ["traffic: required (a number in (0, 1])"]})
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise _HTTPError(400, {"errors": ["reason: must be a string"]})
            traffic = store.check_traffic(body["traffic"])
            experiment = await _db(lambda conn: store.ramp(conn, experiment_id, traffic, reason))
            _assign_cache.pop(experiment_id, None)
            announced = await _announce(experiment)
            return self.json({**experiment.to_dict(), "announced": announced})

        return await self._run(handle)


async def latest_result(experiment_id: str) -> bytes | None:
    """The latest result payload: Redis first, PostgreSQL when Redis has none or is down."""
    try:
        cached = await redis_values.read("exp", experiment_id)
        if cached is not None:
            return cached[1]
    except Exception as exc:
        log.warning("experiments API: Redis read failed, using PostgreSQL: %r", exc)
    row = await _db(lambda conn: store.latest_result(conn, experiment_id))
    return orjson.dumps(row[1]) if row else None


@app.page("/experiments/{experiment_id}/results")
class ResultsView(_ExperimentView):
    async def get(self, request: Request, experiment_id: str) -> Response:
        async def handle() -> Response:
            payload = await latest_result(experiment_id)
            if payload is None:
                await _get_experiment(experiment_id)  # 404 for an unknown id
                return self.json(
                    {"experiment_id": experiment_id, "error": "no result yet"}, status=404
                )
            return self.bytes(payload, content_type="application/json")

        return await self._run(handle)


@app.page("/experiments/{experiment_id}/assign")
class AssignView(_ExperimentView):
    async def get(self, request: Request, experiment_id: str) -> Response:
        async def handle() -> Response:
            unit = request.query.get("unit")
            if not unit:
                raise _HTTPError(400, {"errors": ["unit: query parameter required"]})
            now = time.monotonic()
            cached = _assign_cache.get(experiment_id)
            if cached is None or now - cached[0] > ASSIGN_CACHE_S:
                if len(_assign_cache) >= ASSIGN_CACHE_MAX:  # unknown ids must not grow it
                    _assign_cache.clear()
                row = await _db(lambda conn: store.get(conn, experiment_id))
                _assign_cache[experiment_id] = cached = (now, row)
            if cached[1] is None:
                raise store.NotFound(f"no experiment {experiment_id!r}")
            attributes = {k: request.query.get(k) for k in ("device", "persona", "segment")}
            return self.json(store.assignment(cached[1], unit, attributes))

        return await self._run(handle)


@app.page("/state/experiments/{experiment_id}")
class ExperimentStateView(View):
    """The agent's aggregate for the experiment on this worker (404 when not held here)."""

    async def get(self, request: Request, experiment_id: str) -> Response:
        from agents.experiments.agent import experiments_table
        from agents.experiments.state import ExperimentState

        blob = experiments_table.get(experiment_id)
        if blob is None:
            return self.json({"experiment_id": experiment_id, "found": False}, status=404)
        state = ExperimentState.unpack(blob)
        d = state.defn
        prefix = f"{experiment_id}|"
        unit_records = sum(
            1 for key in list(experiments_table.data.keys()) if key.startswith(prefix)
        )
        return self.json(
            {
                "experiment_id": experiment_id,
                "found": True,
                "status": state.status,
                "revision": state.revision,
                "traffic_fraction": d.traffic,
                "offsets": state.offsets,
                "units": dict(zip(d.variants, state.units(), strict=True)),
                "periods": len(state.periods),
                "weights": state.weights,
                "counters": state.counters,
                "result_version": state.result_version,
                "rolled_back": state.rolled_back,
                "actions": sorted(state.actions),
                "dirty": state.dirty,
                "unit_records": unit_records,
                "ended_ms": state.ended_ms,
                "purged": state.purged,
            }
        )
