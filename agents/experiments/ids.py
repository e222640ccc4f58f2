"""Deterministic ids of the experiments' output events (definitions, results, actions).

Kept apart (hashlib only) so that the CLI can build definition events without loading the
statistics stack.
"""

from __future__ import annotations

import hashlib
from typing import Any


def bounded_id(*parts: Any) -> str:
    """``"res:exp:7"``; the experiment id (second part) is hashed if the id would pass 128.

    Event and action ids are limited to 128 characters by the schemas, and experiment ids
    may be 128 characters long themselves.

    >>> bounded_id("res", "checkout", 7)
    'res:checkout:7'
    >>> len(bounded_id("res", "x" * 128, 7))
    30
    """
    text = ":".join(str(p) for p in parts)
    if len(text) <= 128:
        return text
    head, exp, *tail = (str(p) for p in parts)
    digest = hashlib.blake2b(exp.encode(), digest_size=12).hexdigest()
    return ":".join([head, digest, *tail])[:128]
