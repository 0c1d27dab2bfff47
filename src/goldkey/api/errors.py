"""How Goldkey's errors are answered: one JSON body shape for every 4xx/5xx."""

from __future__ import annotations

import orjson

from goldkey.core.errors import GoldkeyError, InvalidInput


def error_parts(exc: GoldkeyError) -> tuple[int, bytes, dict[str, str]]:
    """Return (status, JSON body, extra headers) for ``exc``.

    The body names the problem (``error``, and for bad input the ``field`` and ``record``) and
    carries Segment's ``code``/``message`` keys, which the analytics SDKs read.
    """
    body: dict[str, object] = {"error": str(exc)}
    if isinstance(exc, InvalidInput):
        body = {"error": str(exc), "field": exc.field, "record": exc.record}
    body["code"] = type(exc).__name__
    body["message"] = str(exc)
    retry = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry)} if retry is not None else {}
    return exc.status_code, orjson.dumps(body), headers
