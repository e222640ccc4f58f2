"""Serving endpoints of the worker (every worker answers them; reads come from Redis).

``POST /feedback``                      validate, produce to the right topic, 202 + event id
``GET  /users/{id}/weights``            the user's latest preference vector
``GET  /users/{id}/strategy``           segment, algorithm weights, exploration, disabled set
                                        (per user in contextual mode)
``GET  /segments/{segment}/scoring-weights``  the segment's choice-scoring weights

Fallbacks when a Redis key is missing (docs/operations.md, "HTTP endpoints"): weights and
strategy fall back to PostgreSQL (``user_preferences``, ``algorithm_weights``); a user never seen is
``new`` and gets the ``new`` segment's weights, or uniform weights over the configured
algorithms (``"source": "default"``) before anything was published; scoring weights fall
back to the configured defaults (``"is_default": true``). Redis or PostgreSQL being down
gives 503, never a made-up value.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from faust.web import Request, Response, View

from agents.bandits.weights import contextual_strategy
from agents.learning.preference import EXPLICIT_KINDS, IMPLICIT_KINDS
from loopwise.web.http import HTTPError, check_token, read_body
from streams.app import app, postgres, redis_values, settings, topic
from streams.codecs import EventDecoder, Rejected, key_of
from streams.topics import get_topic

log = logging.getLogger(__name__)

_topic_of_kind = {k: "feedback.explicit" for k in EXPLICIT_KINDS} | {
    k: "feedback.implicit" for k in IMPLICIT_KINDS
}
_decoders = {
    name: EventDecoder(name, settings.api_max_body_bytes)
    for name in ("feedback.explicit", "feedback.implicit")
}
_topics = {name: topic(name) for name in _decoders}


class _APIView(View):
    async def _run(self, handler: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await handler()
        except HTTPError as exc:
            return self.json(exc.body, status=exc.status)
        except (OSError, ConnectionError, TimeoutError) as exc:
            log.warning("API: a store is unavailable: %r", exc)
            return self.json({"error": f"store unavailable: {type(exc).__name__}"}, status=503)


async def _latest(kind: str, entity: str) -> dict[str, Any] | None:
    try:
        found = await redis_values.read(kind, entity)
    except Exception as exc:
        raise HTTPError(503, {"error": f"redis unavailable: {type(exc).__name__}"}) from exc
    return None if found is None else orjson.loads(found[1])


async def _fetch(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    try:
        return await postgres.fetch(sql, params)
    except Exception as exc:
        raise HTTPError(503, {"error": f"postgresql unavailable: {type(exc).__name__}"}) from exc


async def user_weights(user_id: str) -> dict[str, Any] | None:
    cached = await _latest("pref", user_id)
    if cached is not None:
        return {**cached, "source": "redis"}
    rows = await _fetch(
        "SELECT vector, version, segment, interactions, source_ts FROM user_preferences"
        " WHERE user_id = %s",
        (user_id,),
    )
    if not rows:
        return None
    vector, version, segment, interactions, source_ts = rows[0]
    return {
        "user_id": user_id, "vector": vector, "dim": len(vector), "version": version,
        "segment": segment, "interactions": interactions, "source_ts": source_ts,
        "source": "postgres",
    }  # fmt: skip


async def segment_algorithms(segment: str) -> dict[str, Any]:
    cached = await _latest("alg", segment)
    if cached is not None:
        return {**cached, "source": "redis"}
    rows = await _fetch("SELECT payload FROM algorithm_weights WHERE segment = %s", (segment,))
    if rows:
        payload = rows[0][0]
        return {**(payload if isinstance(payload, dict) else orjson.loads(payload)),
                "source": "postgres"}  # fmt: skip
    n = len(settings.algorithms)
    return {
        "segment": segment,
        "algorithms": [
            {"name": a, "weight": 1.0 / n, "prob_best": 1.0 / n, "disabled": False}
            for a in settings.algorithms
        ],
        "exploration_rate": settings.exploration_rates[segment],
        "source": "default",
    }


@app.page("/feedback")
class FeedbackView(_APIView):
    async def post(self, request: Request) -> Response:
        async def handle() -> Response:
            check_token(request)
            raw = await read_body(request)
            try:
                kind = orjson.loads(raw).get("kind") if raw else None
            except (orjson.JSONDecodeError, AttributeError):
                kind = None
            name = _topic_of_kind.get(kind, "feedback.explicit")
            try:
                event = _decoders[name](raw)
            except Rejected as exc:
                raise HTTPError(400, {"error_kind": exc.kind, "errors": [exc.message]}) from exc
            key = key_of(event, get_topic(name).key_field)
            await _topics[name].send(key=key.encode(), value=raw)
            return self.json({"event_id": event["event_id"], "topic": settings.topic(name)},
                             status=202)  # fmt: skip

        return await self._run(handle)


@app.page("/users/{user_id}/weights")
class UserWeightsView(_APIView):
    async def get(self, request: Request, user_id: str) -> Response:
        async def handle() -> Response:
            weights = await user_weights(user_id)
            if weights is None:
                raise HTTPError(404, {"error": f"no preference vector for user {user_id!r}"})
            return self.json(weights)

        return await self._run(handle)


@app.page("/users/{user_id}/strategy")
class UserStrategyView(_APIView):
    async def get(self, request: Request, user_id: str) -> Response:
        async def handle() -> Response:
            weights = await user_weights(user_id)
            segment = (weights or {}).get("segment") or "new"
            algos = await segment_algorithms(segment)
            served = [
                {k: a[k] for k in ("name", "weight", "prob_best", "disabled") if k in a}
                for a in algos["algorithms"]
            ]
            body: dict[str, Any] = {"strategy": "segment"}
            if algos.get("mode") == "contextual":
                # A seed fixed per (user, published version): the same answer until the
                # models change, and a decision's propensity can be recomputed from it.
                seed = zlib.crc32(f"{user_id}:{algos.get('version')}".encode())
                vector = None if weights is None else np.asarray(weights["vector"], dtype=float)
                per_user = contextual_strategy(algos, vector, seed)
                if per_user is not None:
                    probs, mixed = per_user
                    for a, p, w in zip(served, probs, mixed, strict=True):
                        a["prob_best"], a["weight"] = float(p), float(w)
                    body = {"strategy": "contextual", "seed": seed}
            return self.json({
                "user_id": user_id,
                "segment": segment,
                "known_user": weights is not None,
                "exploration_rate": algos["exploration_rate"],
                "algorithms": served,
                "disabled": [a["name"] for a in algos["algorithms"] if a.get("disabled")],
                "version": algos.get("version"),
                "source": algos["source"],
                "mode": algos.get("mode", "stationary"),
                **body,
            })  # fmt: skip

        return await self._run(handle)


@app.page("/segments/{segment}/scoring-weights")
class ScoringWeightsView(_APIView):
    async def get(self, request: Request, segment: str) -> Response:
        async def handle() -> Response:
            cached = await _latest("scoring", segment)
            if cached is not None:
                return self.json({**cached, "source": "redis"})
            # The configured defaults, or equal weights over the configured factors.
            factors = settings.choice_factors
            defaults = settings.choice_default_weights or {f: 1 / len(factors) for f in factors}
            return self.json({
                "segment": segment, "weights": defaults, "confidence": 0.0, "sample_size": 0,
                "applied": False, "is_default": True, "source": "default",
            })  # fmt: skip

        return await self._run(handle)
