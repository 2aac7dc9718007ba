"""Request logging, error mapping and authentication for every API call."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from cspd.api.keys import AUTH, CONFIG, OWN_ADDRESSES
from cspd.errors import BadRequest, CspError, Unauthorized
from cspd.wire import encode

log = logging.getLogger("cspd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Status codes aiohttp raises itself, mapped to the CSP error codes.
_HTTP_CODES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Bad Request",
    415: "Unsupported Media Type",
}


def error_response(status: int, code: str, message: str) -> web.Response:
    if status == 401:
        # The HPE CSI driver logs in again on a 401 and repeats the call. An
        # error body would stay in its error variable and fail the repeat.
        return web.Response(status=401)
    body = {"errors": [{"code": code, "message": message}]}
    return web.Response(status=status, body=encode(body), content_type="application/json")


@web.middleware
async def log_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        duration_ms = (time.monotonic() - started) * 1000
        log.info(
            "%s %s %d %.1fms",
            request.method,
            request.path,
            status,
            duration_ms,
            extra={"method": request.method, "path": request.path, "status": status,
                   "duration_ms": round(duration_ms, 1), "peer": request.remote},
        )


@web.middleware
async def map_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CspError as err:
        if err.status >= 500:
            log.error(
                "%s %s failed: %s", request.method, request.path, err.message, exc_info=err
            )
            return error_response(
                err.status, err.code,
                "The array failed to carry out the request; the cspd log has the details.",
            )
        return error_response(err.status, err.code, err.message)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        if err.status == 413:
            message = (
                f"The request body is larger than the limit of "
                f"{request.app[CONFIG].api.max_body_bytes} bytes (api.max_body_bytes)."
            )
            return error_response(400, "Bad Request", message)
        code = _HTTP_CODES.get(err.status, err.reason)
        message = err.text if err.text and not err.text.startswith(str(err.status)) else (
            f"{request.method} {request.path}: {err.reason}."
        )
        return error_response(err.status, code, message)
    except Exception as err:
        log.exception("%s %s failed", request.method, request.path, exc_info=err)
        return error_response(
            500, "Internal Server Error",
            "The array failed to carry out the request; the cspd log has the details.",
        )


def _is_token_login(request: web.Request) -> bool:
    return request.method == "POST" and request.path.rstrip("/").endswith("/containers/v1/tokens")


def check_array_ip(value: str, own: frozenset[str]) -> None:
    """Raise BadRequest unless ``value`` is empty or names this box."""
    if not value or value.strip().lower().strip("[]") in own:
        return
    raise BadRequest(
        f"Invalid array address {value!r}: this CSP serves only the array it runs on; "
        "send an empty array_ip or one of its own addresses."
    )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if _is_token_login(request):
        return await handler(request)
    token = request.headers.get("x-auth-token", "")
    if not token:
        raise Unauthorized("missing x-auth-token")
    await request.app[AUTH].check(token)
    check_array_ip(request.headers.get("x-array-ip", ""), request.app[OWN_ADDRESSES])
    return await handler(request)
