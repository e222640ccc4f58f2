"""Shared pieces of the worker's HTTP API: errors, bearer-token check, bounded bodies."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from faust.web import Request

from streams.app import settings


class HTTPError(Exception):
    """An answer other than success: status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


def check_token(request: Request) -> None:
    """Mutating endpoints need ``Authorization: Bearer $LOOPWISE_API_TOKEN``."""
    if not settings.api_token:
        raise HTTPError(
            401, {"error": "mutating endpoints are disabled: LOOPWISE_API_TOKEN is not set"}
        )
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), settings.api_token.encode()
    ):
        raise HTTPError(401, {"error": "missing or wrong bearer token"})


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 beyond ``LOOPWISE_API_MAX_BODY_BYTES``."""
    limit = settings.api_max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise HTTPError(413, {"error": f"request body of {length} bytes exceeds {limit}"})
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body.extend(chunk)
        if len(body) > limit:
            raise HTTPError(413, {"error": f"request body exceeds {limit} bytes"})
    return bytes(body)


async def read_json(request: Request, required: bool = True, what: str = "a JSON body") -> Any:
    body = await read_body(request)
    if not body:
        if required:
            raise HTTPError(400, {"errors": [f"request body: {what} is required"]})
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, {"errors": [f"request body is not JSON: {exc}"]}) from exc
