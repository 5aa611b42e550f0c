"""GET /restate/health: readiness plus the registered service names (Restate `handler/health.rs`)."""

from __future__ import annotations

from aiohttp import web

from ingress.errors import MethodNotAllowed
from ingress.handlers.responses import json_response
from ingress.handlers.target import Targets


def handle_health(request: web.Request, targets: Targets) -> web.Response:
    """200 `{"services": [...]}`; any method but GET is 405."""
    if request.method != "GET":
        raise MethodNotAllowed()
    return json_response({"services": list(targets.snapshot().services)})
