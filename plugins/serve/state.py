"""What one request carries between the middleware and its route (typed aiohttp keys)."""

from __future__ import annotations

from aiohttp import web
from modelherd.plugins.serve.auth import Principal

REQUEST_ID = web.RequestKey("herd_request_id", str)
PRINCIPAL = web.RequestKey("herd_principal", Principal)
#: the alias the request asked for, once the route has checked it
MODEL = web.RequestKey("herd_model", str)
#: the status of an error sent inside a stream that had already answered 200
STREAM_STATUS = web.RequestKey("herd_stream_status", int)
#: perf_counter() at the first content chunk of a stream
FIRST_CHUNK = web.RequestKey("herd_first_chunk", float)
