"""Ingress error family (the one HTTP status table lives at the bottom of this module).

Every error answered to a client is an `IngressError`: status, message and source
(`ingress` or `invocation`), rendered as {"code","message","source"} with the
`x-restate-error-source` header (and `x-restate-id` when `invocation_id` is set).
Messages follow Restate 1.7 (`crates/ingress-http/src/handler/error.rs`) word for word.
"""

from __future__ import annotations


class IngressError(Exception):
    """Base of every error the ingress answers with a JSON body."""

    status: int = 500
    source: str = "ingress"

    def __init__(self, message: str, *, invocation_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.invocation_id = invocation_id


class BadRequest(IngressError):
    """The request is malformed: path shape, header, query parameter, body or target rules."""


class NotFound(IngressError):
    """Unknown route, service or handler (`not found`, `service '<s>' not found, ...`)."""


class MethodNotAllowed(IngressError):
    """The HTTP method is not accepted on this path."""

    def __init__(self, message: str = "method not allowed", *, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)


class PayloadTooLarge(IngressError):
    """The request body exceeds the configured `max_body_bytes`."""

    def __init__(
        self, message: str = "cannot read body: length limit exceeded", *, invocation_id: str | None = None
    ) -> None:
        super().__init__(message, invocation_id=invocation_id)


class Overloaded(IngressError):
    """The ingress concurrency limit is exhausted (load shedding); retrying later is safe."""

    def __init__(
        self,
        message: str = "too many requests, the ingress is overloaded. Retry later.",
        *,
        retry_after_s: float = 1.0,
        invocation_id: str | None = None,
    ) -> None:
        super().__init__(message, invocation_id=invocation_id)
        self.retry_after_s = retry_after_s


class OutputNotSupported(BadRequest):
    """Output/attach is not possible for this invocation (no retained completion)."""

    def __init__(
        self,
        message: str = (
            "cannot get output for the given invocation. You can get output only for invocations "
            "created with an idempotency key, or for workflow methods."
        ),
        *,
        invocation_id: str | None = None,
    ) -> None:
        super().__init__(message, invocation_id=invocation_id)


class InvocationNotFound(IngressError):
    """No invocation with that id (never existed, or purged)."""


class InvocationNotReady(IngressError):
    """The invocation exists but has not completed (output only)."""


class PartitionUnavailable(IngressError):
    """No worker could be reached for the partition within the deadline; retry is safe with an idempotency key."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)
        self.retry_after_s = retry_after_s


class InternalError(IngressError):
    """An unexpected failure inside the ingress (logged; never carries internals to the client)."""


# ---- the one HTTP status table ------------------------------------------------------------------
# 470 is Restate's own code for "exists but not completed yet".
HTTP_STATUS: dict[type[IngressError], int] = {
    IngressError: 500,
    BadRequest: 400,
    OutputNotSupported: 400,
    NotFound: 404,
    InvocationNotFound: 404,
    MethodNotAllowed: 405,
    PayloadTooLarge: 413,
    Overloaded: 429,
    InvocationNotReady: 470,
    InternalError: 500,
    PartitionUnavailable: 503,
}

for _cls, _status in HTTP_STATUS.items():
    _cls.status = _status
del _cls, _status
