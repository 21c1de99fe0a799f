"""The web app of `rlhfkit label`: the page and a JSON API over a `JudgementStore`.

    GET  /             the labelling page (rlhfkit.label.page)
    GET  /healthz      {"ok": true, "progress": {...}}
    POST /api/next     {"annotator", "pair_id"?, "left"?}          -> answer (the pair shown,
                                                                   claimed back, or the next)
    POST /api/judge    {"annotator", "pair_id", "label", "left"}   -> answer (next pair)
    POST /api/undo     {"annotator"}                               -> answer (that pair again)

An answer is `JudgementStore`'s: {"status", "pair", "done", "progress"}. Every request is
checked before it reaches the store, and every mistake is a 4xx answer with a JSON body
{"error": "..."}, never a crash:

    400  not JSON, not an object, a Host header that is not this machine's loopback name
    403  a missing or wrong token (when the server has one)
    404  an unknown path or pair        405  a wrong method
    413  a body over 16 KiB             415  a body that is not application/json
    422  unknown, missing or ill-typed fields

The Host check (on loopback only) stops DNS rebinding: a web page elsewhere cannot make the
browser talk to this server under a name of its own. Requiring application/json stops
cross-site form posts, which can only send form or text bodies without asking first.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from rlhfkit.label.page import render_page
from rlhfkit.label.store import LABELS, PREFERENCE_LABELS, JudgementStore, UnknownPair

__all__ = ["create_app", "MAX_BODY_BYTES", "MAX_NAME_CHARS"]

MAX_BODY_BYTES = 16 * 1024
MAX_NAME_CHARS = 64
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"), (b"x-frame-options", b"DENY")]
CSP = ("default-src 'none'; script-src 'nonce-{n}'; style-src 'nonce-{n}'; connect-src 'self'; "
       "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


# ---------------------------------------------------------------------------- body checks

def _annotator(value) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "expected a non-empty string"
    if len(value) > MAX_NAME_CHARS or not value.isprintable():
        return f"at most {MAX_NAME_CHARS} printable characters"
    return None


def _pair_id(value) -> str | None:
    return None if isinstance(value, str) and 0 < len(value) <= 128 else "expected a pair id"


def _one_of(choices: tuple[str, ...]) -> Callable[[object], str | None]:
    def check(value) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}"
    return check


def _optional(check: Callable[[object], str | None]) -> Callable[[object], str | None]:
    """`check`, but an absent field (or null) passes."""
    return lambda value: None if value is None else check(value)


async def read_body(request: Request, fields: dict[str, Callable]) -> dict:
    """The request's JSON object, holding exactly `fields`, each passing its check."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "send a JSON body (Content-Type: application/json)")
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():   # chunked bodies carry no length: count here
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "expected a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HTTPException(422, f"unknown field(s): {', '.join(unknown)[:200]}")
    for name, check in fields.items():
        problem = check(data.get(name))
        if problem:
            raise HTTPException(422, f"{name}: {problem}")
    if "annotator" in data:
        data["annotator"] = data["annotator"].strip()
    return data


# ---------------------------------------------------------------------------- the app

def create_app(store: JudgementStore, token: str | None = None, loopback: bool = True) -> Guard:
    """The ASGI app serving `store`: Starlette routes behind a `Guard` (with `token`, every
    request must carry it; with `loopback`, the Host header must name this machine)."""

    async def page(request: Request) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(render_page(nonce),
                            headers={"content-security-policy": CSP.format(n=nonce)})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "progress": store.progress()})

    async def next_pair(request: Request) -> JSONResponse:
        body = await read_body(request, {"annotator": _annotator,
                                         "pair_id": _optional(_pair_id),
                                         "left": _optional(_one_of(PREFERENCE_LABELS))})
        return JSONResponse(store.next_pair(body["annotator"], body.get("pair_id"),
                                            body.get("left")))

    async def judge(request: Request) -> JSONResponse:
        body = await read_body(request, {"annotator": _annotator, "pair_id": _pair_id,
                                         "label": _one_of(LABELS),
                                         "left": _one_of(PREFERENCE_LABELS)})
        try:
            answer = store.judge(body["annotator"], body["pair_id"], body["label"], body["left"])
        except UnknownPair as err:
            raise HTTPException(404, str(err)) from None
        return JSONResponse(answer)

    async def undo(request: Request) -> JSONResponse:
        body = await read_body(request, {"annotator": _annotator})
        return JSONResponse(store.undo(body["annotator"]))

    routes = [Route("/", page, methods=["GET"]), Route("/healthz", health, methods=["GET"]),
              Route("/api/next", next_pair, methods=["POST"]),
              Route("/api/judge", judge, methods=["POST"]),
              Route("/api/undo", undo, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _json_error,
                                                       Exception: _internal_error})
    return Guard(app, token, loopback)


async def _json_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # A bug or a full disk: the judgement was not written, and the page says so.
    return JSONResponse({"error": f"the server failed: {type(exc).__name__}; the choice was "
                                  "not saved"}, status_code=500)


class Guard:
    """ASGI middleware in front of the app: Host check, token check, security headers."""

    def __init__(self, app, token: str | None, loopback: bool):
        self.app, self.loopback = app, loopback
        self.token = token.encode("utf-8") if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        problem = self._problem(scope, headers)
        if problem is not None:
            status, message = problem
            response = JSONResponse({"error": message}, status_code=status)
            return await response(scope, receive, self._with_headers(send))
        await self.app(scope, receive, self._with_headers(send))

    def _problem(self, scope, headers: Headers) -> tuple[int, str] | None:
        if self.loopback and _hostname(headers.get("host", "")) not in LOOPBACK_NAMES:
            return 400, "unexpected Host header: open the page at http://127.0.0.1:PORT/"
        if self.token is not None:
            given = (QueryParams(scope.get("query_string", b"")).get("token")
                     or headers.get("x-rlhfkit-token") or "")
            if not hmac.compare_digest(given.encode("utf-8"), self.token):
                return 403, "this server needs its token: open the URL it printed (…?token=…)"
        return None

    @staticmethod
    def _with_headers(send):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)
        return wrapped


def _hostname(host: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1', '[::1]:8765' -> '::1', 'LocalHost' -> 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
