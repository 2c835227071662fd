"""The viewer's web application (Starlette) and the server that runs it (uvicorn).

Routes
======

==========================  ======  ==================================================================
path                        method  answer
==========================  ======  ==================================================================
``/``                       GET     the viewer page (``static/index.html``)
``/static/<file>``          GET     the page's own JavaScript and CSS
``/api/model``              GET     checkpoint, classes, metrics, data, layers (name, type, output shape)
``/api/data``               GET     a page of data images (``?offset=0&limit=48``)
``/api/data/<n>.png``       GET     data image ``n``
``/api/images``             POST    upload an image (the request body is the file); gives ``upload:<id>``
``/api/images/<id>.png``    GET     an uploaded image, as the model sees it (data channels and size)
``/api/jobs``               POST    start a job: ``{"kind": "examples"|"filters"|"saliency"|"inversion", ...}``
``/api/jobs/<id>``          GET     a job's status, progress (0..1), message and result
``/files/<path>``           GET     a picture a job wrote (only files inside the checkpoint's cache folder)
==========================  ======  ==================================================================

Security
========
* Every request's ``Host`` header must be ``localhost``, ``127.0.0.1`` or ``[::1]`` with the server's port,
  or a host allowed explicitly (``allowed_hosts``); anything else gets 400, which defeats DNS rebinding.
* A state-changing request (POST) with an ``Origin`` header from another site gets 403, and job requests
  must be ``application/json`` (which a foreign page cannot send without a CORS preflight, never granted).
* Uploads are capped (413), decoded and verified with Pillow (415 otherwise) and stored re-encoded.
* Files are served from the package's ``static`` folder and the cache folder only (``..``, encoded
  ``..``/``/``, absolute paths and symlinks leading outside are refused with 403).
* Responses carry ``Content-Security-Policy: default-src 'self'`` and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from netvis.app.serve.cache import FileRefused, resolve_inside
from netvis.app.serve.viewer import UploadError, Viewer, ViewerError, check_bind

__all__ = ["HostGuard", "create_app", "allowed_host_headers", "run_server", "STATIC_DIR"]

STATIC_DIR = Path(os.fspath(resources.files("netvis.app.serve") / "static"))
"""The viewer's HTML, JavaScript and CSS."""

MAX_JSON_BYTES = 64 * 1024

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
]


def allowed_host_headers(port: int, extra: Iterable[str] = ()) -> set[str]:
    """The ``Host`` header values accepted: loopback names with ``port``, plus ``extra`` hosts.

    An ``extra`` entry without a port gets ``port``; on port 80 the bare names are accepted as well
    (browsers leave the default port out).
    """
    names = ["localhost", "127.0.0.1", "[::1]"]
    allowed: set[str] = set()
    for name in names:
        allowed.add(f"{name}:{port}")
        if port == 80:
            allowed.add(name)
    for host in extra:
        host = host.strip().lower()
        if not host:
            continue
        if ":" in host and not host.startswith("[") and host.count(":") > 1:
            host = f"[{host}]"  # a bare IPv6 address
        has_port = host.rsplit("]", 1)[-1].count(":") == 1 if host.startswith("[") else ":" in host
        if has_port:
            allowed.add(host)
        else:
            allowed.add(f"{host}:{port}")
            if port == 80:
                allowed.add(host)
    return allowed


class HostGuard:
    """ASGI middleware: reject foreign ``Host`` headers (400) and foreign ``Origin`` on POST (403); add
    security headers to every response.

    Args:
        app: The wrapped ASGI application.
        allowed: Accepted ``Host`` values, lower case (see :func:`allowed_host_headers`).
    """

    def __init__(self, app: Any, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}
        self.origins = {f"{scheme}://{h}" for h in self.allowed for scheme in ("http", "https")}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [v.decode("latin-1").strip().lower() for k, v in scope.get("headers", []) if k == b"host"]
        if len(hosts) != 1 or hosts[0] not in self.allowed:
            await self._refuse(scope, send, 400, "foreign Host header refused: open the viewer at the address it "
                               "printed (http://127.0.0.1:PORT/)")
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD", "OPTIONS"):
            origins = [v.decode("latin-1").strip().lower() for k, v in scope.get("headers", []) if k == b"origin"]
            if origins and any(o not in self.origins for o in origins):
                await self._refuse(scope, send, 403, "cross-origin request refused")
                return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in names]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    async def _refuse(scope: dict, send: Any, status: int, text: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": text}).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"), *_SECURITY_HEADERS],
        })
        await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    headers = {"cache-control": "no-store"}
    if close:  # the rest of the request body is not read: end the connection after the answer
        headers["connection"] = "close"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _json(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"cache-control": "no-store"})


def _file(path: Path, *, immutable: bool = False) -> FileResponse:
    media = _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
    cache = "public, max-age=86400" if immutable else "no-cache"
    return FileResponse(path, media_type=media, headers={"cache-control": cache})


def _served(root: Path, request: Request) -> Path:
    """The file a ``{path:path}`` route names inside ``root``, refusing encoded traversal in the raw path."""
    raw = request.scope.get("raw_path", b"").lower()
    if b"%2e" in raw or b"%2f" in raw or b"%5c" in raw or b"%00" in raw:
        raise FileRefused(403, "encoded dots and slashes are refused")
    return resolve_inside(root, request.path_params["path"])


async def _read_body(request: Request, limit: int, too_large: str) -> bytes | Response:
    """The request body, or the answer to give instead: 413 (``too_large``) as soon as it passes ``limit``
    bytes, 400 when the client disconnects."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _error(413, too_large, close=True)
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is listening any more
    return bytes(body)


def create_app(
    viewer: Viewer | Any,
    *,
    port: int = 8000,
    allowed_hosts: Iterable[str] = (),
    **viewer_options: Any,
) -> Starlette:
    """The viewer's ASGI application.

    Args:
        viewer: A :class:`~netvis.app.serve.viewer.Viewer`, or what :class:`Viewer` takes as its checkpoint (a
            path, run folder or shipped name); the app then owns the viewer and closes it on shutdown.
        port: The port the server listens on (``Host`` headers must carry it).
        allowed_hosts: More ``Host`` values to accept (e.g. the machine's name with ``--allow-remote``).
        **viewer_options: Passed to :class:`Viewer` when ``viewer`` is not one.

    Returns:
        A Starlette application; ``app.state.viewer`` is the viewer.
    """
    owns = not isinstance(viewer, Viewer)
    if owns:
        viewer = Viewer(viewer, **viewer_options)
    elif viewer_options:
        raise TypeError(f"viewer options {sorted(viewer_options)} need a checkpoint, not a Viewer")
    index_html = STATIC_DIR / "index.html"

    async def page(request: Request) -> Response:
        return _file(index_html)

    async def static(request: Request) -> Response:
        return _file(_served(STATIC_DIR, request))

    async def files(request: Request) -> Response:
        return _file(_served(viewer.cache.results, request), immutable=True)

    async def model(request: Request) -> Response:
        return _json(viewer.info())

    async def data(request: Request) -> Response:
        try:
            offset = int(request.query_params.get("offset", "0"))
            limit = int(request.query_params.get("limit", "48"))
        except ValueError:
            return _error(400, "offset and limit must be integers")
        return _json(viewer.data_items(offset, limit))

    async def data_png(request: Request) -> Response:
        png = await run_in_threadpool(viewer.data_png, request.path_params["index"])
        return Response(png, media_type="image/png", headers={"cache-control": "public, max-age=86400"})

    async def upload_png(request: Request) -> Response:
        return _file(viewer.upload_png(request.path_params["image_id"]), immutable=True)

    async def upload(request: Request) -> Response:
        limit = viewer.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _error(400, "invalid Content-Length", close=True)
            if int(length) > limit:
                return _error(413, f"upload too large: {int(length)} bytes (at most {limit})", close=True)
        if request.headers.get("content-type", "").lower().startswith("multipart/"):
            return _error(415, "send the image file itself as the request body, not a multipart form", close=True)
        body = await _read_body(request, limit, f"upload too large: more than {limit} bytes")
        if isinstance(body, Response):
            return body
        result = await run_in_threadpool(viewer.add_upload, body)
        return _json(result, 201)

    async def submit(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "a job request is JSON: send Content-Type: application/json", close=True)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_JSON_BYTES:
            return _error(413, "job request too large", close=True)
        body = await _read_body(request, MAX_JSON_BYTES, "job request too large")
        if isinstance(body, Response):
            return body
        try:
            payload = json.loads(body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"invalid JSON: {exc}")
        job = await run_in_threadpool(viewer.submit, payload)
        return _json(viewer.job(job.id), 202)

    async def job(request: Request) -> Response:
        return _json(viewer.job(request.path_params["job_id"]))

    async def health(request: Request) -> Response:
        return _json({"ok": True, "jobs": viewer.jobs.counts()})

    async def viewer_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ViewerError)
        return _error(exc.status, str(exc))

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FileRefused)
        return _error(exc.status, "forbidden" if exc.status == 403 else "not found")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            yield
        finally:
            if owns:
                viewer.close()

    routes = [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/static/{path:path}", static, methods=["GET", "HEAD"]),
        Route("/files/{path:path}", files, methods=["GET", "HEAD"]),
        Route("/api/model", model, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/data", data, methods=["GET"]),
        Route("/api/data/{index:int}.png", data_png, methods=["GET", "HEAD"]),
        Route("/api/images", upload, methods=["POST"]),
        Route("/api/images/{image_id}.png", upload_png, methods=["GET", "HEAD"]),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", job, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ViewerError: viewer_error, UploadError: viewer_error, FileRefused: refused,
                            HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.viewer = viewer
    app.add_middleware(HostGuard, allowed=allowed_host_headers(port, allowed_hosts))
    return app


def run_server(
    checkpoint: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_remote: bool = False,
    allowed_hosts: Iterable[str] = (),
    log_level: str = "info",
    **viewer_options: Any,
) -> None:
    """Load the checkpoint and data, print the viewer's address and serve until interrupted.

    Args:
        checkpoint: A checkpoint file, run folder or shipped name.
        host: Address to listen on; anything but a loopback address needs ``allow_remote``.
        port: Port to listen on.
        allow_remote: Allow a non-loopback ``host`` (prints a warning: the viewer has no authentication).
        allowed_hosts: More ``Host`` header values to accept (the bound address is accepted already).
        log_level: uvicorn's log level.
        **viewer_options: ``data``, ``split``, ``cache``, ``limit``, ``workers``, ``device``, ... (see
            :class:`~netvis.app.serve.viewer.Viewer`).

    Raises:
        ValueError: a non-loopback ``host`` without ``allow_remote``, or a bad checkpoint or data set.
    """
    check_bind(host, allow_remote)
    extra = list(allowed_hosts)
    if allow_remote:
        if host not in ("0.0.0.0", "::", ""):
            extra.append(host)
        print(
            f"WARNING: the viewer listens on {host}:{port} for the network. It has no authentication: anyone "
            "who can reach this port can run computations and read its results. Browsers must use one of the "
            f"allowed host names: {', '.join(sorted(allowed_host_headers(port, extra)))} "
            "(add more with --allowed-host).",
            file=sys.stderr,
        )
    viewer = Viewer(checkpoint, **viewer_options)
    app = create_app(viewer, port=port, allowed_hosts=extra)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    print(f"netvis viewer: http://{shown}:{port}/  (checkpoint {viewer.checkpoint.path}, data {viewer.data_name}, "
          f"{len(viewer.images)} images, cache {viewer.cache.root})", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False,
                            timeout_keep_alive=5, timeout_graceful_shutdown=3)
    try:
        uvicorn.Server(config).run()
    finally:
        viewer.close()
