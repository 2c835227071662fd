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
``/api/jobs/<id>``          DELETE  cancel a job: a queued one at once, a running one at its next step (a job
                                    other clients also asked for goes on for them)
``/api/health``             GET     ``{"ok": true, "jobs": {status: count}}``
``/files/<path>``           GET     a picture a job wrote (only files inside the checkpoint's cache folder)
==========================  ======  ==================================================================

Security
========
* Every request's ``Host`` header must be ``localhost``, ``127.0.0.1`` or ``[::1]`` with the server's port,
  or a host allowed explicitly (``allowed_hosts``); anything else gets 400, which defeats DNS rebinding.
* A state-changing request (POST) with an ``Origin`` header from another site gets 403, and job requests
  must be ``application/json`` (which a foreign page cannot send without a CORS preflight, never granted).
* Uploads are capped in bytes and pixels (413, the pixels checked from the header before decoding), must
  be PNG or JPEG (415 otherwise), are decoded a few at a time and stored re-encoded.
* Files are served from the package's ``static`` folder and the cache folder only (``..``, encoded
  ``..``/``/``, absolute paths and symlinks leading outside are refused with 403).
* Responses carry ``Content-Security-Policy: default-src 'self'`` and ``X-Content-Type-Options: nosniff``.

Load
====
* Every request body is parsed and validated against :mod:`netvis.app.serve.schema` before anything else:
  a bad body is a 422 whose ``errors`` name each bad field.
* Jobs are limited per client (``X-Netvis-Client`` header, else the peer address) and in all; beyond: 429
  with ``Retry-After``. The queue serves clients in turn.
* No handler blocks the event loop: decoding, file reads, cache look-ups and anything that may wait for a
  lock run in worker threads bounded by a :class:`anyio.CapacityLimiter`; ``/api/health`` stays quick.
* A request body must arrive within ``body_timeout`` seconds (408 and the connection closed otherwise),
  request headers within ``header_timeout`` seconds; idle keep-alive connections close after 5 s.
* On SIGTERM or SIGINT the server stops accepting, cancels the jobs (they stop at their next step), gives
  in-flight requests up to 2 s, and exits within ``exit_deadline`` seconds (5 by default) in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from netvis.app.serve.cache import FileRefused, read_regular, resolve_inside
from netvis.app.serve.jobs import JobLimit, lower_priority
from netvis.app.serve.schema import RequestInvalid, is_json_error, parse_job
from netvis.app.serve.viewer import UploadError, Viewer, ViewerError, check_bind

__all__ = ["HostGuard", "create_app", "allowed_host_headers", "run_server", "STATIC_DIR"]

STATIC_DIR = Path(os.fspath(resources.files("netvis.app.serve") / "static"))
"""The viewer's HTML, JavaScript and CSS."""

MAX_JSON_BYTES = 64 * 1024
BODY_TIMEOUT = 10.0
"""Seconds a client has to send a request body (408 after that)."""
HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request's headers (the connection is closed after that)."""
EXIT_DEADLINE = 4.5
"""Seconds from SIGTERM/SIGINT to the process's exit at the latest."""
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".ico": "image/x-icon",
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


def _error(status: int, message: str, *, close: bool = False, errors: list | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    all_headers = {"cache-control": "no-store", **(headers or {})}
    if close:  # the rest of the request body is not read: end the connection after the answer
        all_headers["connection"] = "close"
    payload: dict[str, Any] = {"error": message}
    if errors is not None:
        payload["errors"] = errors
    return JSONResponse(payload, status_code=status, headers=all_headers)


def _json(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers={"cache-control": "no-store"})


def _bytes(data: bytes, name: str, *, immutable: bool = False) -> Response:
    media = _MEDIA_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")
    cache = "public, max-age=86400" if immutable else "no-cache"
    return Response(data, media_type=media, headers={"cache-control": cache})


def _check_raw_path(request: Request) -> str:
    """The ``{path:path}`` of a file route, refusing encoded traversal in the raw path."""
    raw = request.scope.get("raw_path", b"").lower()
    if b"%2e" in raw or b"%2f" in raw or b"%5c" in raw or b"%00" in raw:
        raise FileRefused(403, "encoded dots and slashes are refused")
    return request.path_params["path"]


def _read_inside(root: Path, relative: str) -> bytes:
    return read_regular(resolve_inside(root, relative))


def client_id(request: Request) -> str:
    """Who sent ``request``: its ``X-Netvis-Client`` header (the page's random id per tab) when well formed,
    else the peer's address."""
    given = request.headers.get("x-netvis-client", "")
    if _CLIENT_ID.match(given):
        return f"id:{given}"
    peer = request.client
    return f"ip:{peer.host}" if peer is not None else "ip:unknown"


async def _read_body(request: Request, limit: int, too_large: str, timeout: float) -> bytes | Response:
    """The request body, or the answer to give instead: 413 (``too_large``) as soon as it passes ``limit``
    bytes, 408 when it has not all arrived after ``timeout`` seconds, 400 when the client disconnects."""
    body = bytearray()
    with anyio.move_on_after(timeout) as scope:
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return _error(413, too_large, close=True)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening any more
    if scope.cancelled_caught:
        return _error(408, f"request body not received within {timeout:g} s", close=True)
    return bytes(body)


def create_app(
    viewer: Viewer | Any,
    *,
    port: int = 8000,
    allowed_hosts: Iterable[str] = (),
    body_timeout: float = BODY_TIMEOUT,
    request_threads: int = 8,
    max_waiting_uploads: int = 32,
    decode_nice: int = 0,
    **viewer_options: Any,
) -> Starlette:
    """The viewer's ASGI application.

    Args:
        viewer: A :class:`~netvis.app.serve.viewer.Viewer`, or what :class:`Viewer` takes as its checkpoint (a
            path, run folder or shipped name); the app then owns the viewer and closes it on shutdown.
        port: The port the server listens on (``Host`` headers must carry it).
        allowed_hosts: More ``Host`` values to accept (e.g. the machine's name with ``--allow-remote``).
        body_timeout: Seconds a client has to send a request body (408 after that).
        request_threads: Worker threads for the blocking parts of requests (decoding, file reads, cache
            look-ups); jobs have their own threads.
        max_waiting_uploads: Uploads that may wait for a decoding slot (beyond: 429).
        decode_nice: Niceness added to the upload-decoding threads (``netvis serve`` uses 10).
        **viewer_options: Passed to :class:`Viewer` when ``viewer`` is not one.

    Returns:
        A Starlette application; ``app.state.viewer`` is the viewer.
    """
    owns = not isinstance(viewer, Viewer)
    if owns:
        viewer = Viewer(viewer, **viewer_options)
    elif viewer_options:
        raise TypeError(f"viewer options {sorted(viewer_options)} need a checkpoint, not a Viewer")
    threads = anyio.CapacityLimiter(request_threads)
    decoders = ThreadPoolExecutor(viewer.decode_slots, thread_name_prefix="netvis-decode",
                                  initializer=lower_priority, initargs=(decode_nice,))
    waiting_uploads = 0

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=threads)

    async def page(request: Request) -> Response:
        return _bytes(await blocking(_read_inside, STATIC_DIR, "index.html"), "index.html")

    async def static(request: Request) -> Response:
        relative = _check_raw_path(request)
        return _bytes(await blocking(_read_inside, STATIC_DIR, relative), relative)

    async def files(request: Request) -> Response:
        relative = _check_raw_path(request)
        return _bytes(await blocking(viewer.cache.read_served, relative), relative, immutable=True)

    async def model(request: Request) -> Response:
        return _json(await blocking(viewer.info))

    async def data(request: Request) -> Response:
        try:
            offset = int(request.query_params.get("offset", "0"))
            limit = int(request.query_params.get("limit", "48"))
        except ValueError:
            return _error(400, "offset and limit must be integers")
        if not (0 <= offset < 1 << 31 and 0 <= limit < 1 << 31):
            return _error(400, "offset and limit must be small non-negative integers")
        return _json(viewer.data_items(offset, limit))

    async def data_png(request: Request) -> Response:
        png = await blocking(viewer.data_png, request.path_params["index"])
        return Response(png, media_type="image/png", headers={"cache-control": "public, max-age=86400"})

    async def upload_png(request: Request) -> Response:
        png = await blocking(viewer.upload_png, request.path_params["image_id"])
        return Response(png, media_type="image/png", headers={"cache-control": "public, max-age=86400"})

    async def upload(request: Request) -> Response:
        nonlocal waiting_uploads
        limit = viewer.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isascii() or not length.isdigit():
                return _error(400, "invalid Content-Length", close=True)
            if int(length) > limit:
                return _error(413, f"upload too large: {int(length)} bytes (at most {limit})", close=True)
        if request.headers.get("content-type", "").lower().startswith("multipart/"):
            return _error(415, "send the image file itself as the request body, not a multipart form", close=True)
        if waiting_uploads >= max_waiting_uploads:
            return _error(429, f"too many uploads at once ({max_waiting_uploads} waiting); try again shortly",
                          close=True, headers={"retry-after": "1"})
        waiting_uploads += 1
        try:
            body = await _read_body(request, limit, f"upload too large: more than {limit} bytes", body_timeout)
            if isinstance(body, Response):
                return body
            # at most decode_slots decodes at once (their own threads): memory stays bounded
            result = await asyncio.get_running_loop().run_in_executor(decoders, viewer.add_upload, body)
        finally:
            waiting_uploads -= 1
        return _json(result, 201)

    async def submit(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "a job request is JSON: send Content-Type: application/json", close=True)
        length = request.headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > MAX_JSON_BYTES:
            return _error(413, "job request too large", close=True)
        body = await _read_body(request, MAX_JSON_BYTES, "job request too large", body_timeout)
        if isinstance(body, Response):
            return body
        try:
            job_request = parse_job(body)
        except RequestInvalid as exc:
            if is_json_error(exc):
                return _error(400, str(exc), errors=exc.errors)
            raise
        job = await blocking(viewer.submit, job_request, client_id(request))
        return _json(viewer.job(job.id), 202)

    async def job(request: Request) -> Response:
        return _json(viewer.job(request.path_params["job_id"]))

    async def cancel(request: Request) -> Response:
        snapshot = viewer.cancel(request.path_params["job_id"], client_id(request))
        if snapshot["status"] in ("done", "error"):
            return _error(409, f"job already {snapshot['status']}: nothing to cancel")
        stopping = snapshot["status"] == "running" and snapshot["message"] == "cancelling"
        return _json(snapshot, 202 if stopping else 200)  # 200 also when other clients still want the job

    async def health(request: Request) -> Response:
        return _json({"ok": True, "jobs": viewer.jobs.counts()})

    async def viewer_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ViewerError)
        errors = [{"field": exc.field, "message": exc.reason}] if exc.field else None
        return _error(exc.status, str(exc), errors=errors)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestInvalid)
        return _error(422, str(exc), errors=exc.errors)

    async def limited(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobLimit)
        return _error(429, str(exc), headers={"retry-after": str(exc.retry_after)})

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
            decoders.shutdown(wait=False, cancel_futures=True)
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
        Route("/api/jobs/{job_id}", cancel, methods=["DELETE"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ViewerError: viewer_error, UploadError: viewer_error, FileRefused: refused,
                            RequestInvalid: invalid, JobLimit: limited, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.viewer = viewer
    app.add_middleware(HostGuard, allowed=allowed_host_headers(port, allowed_hosts))
    return app


# ------------------------------------------------------------------------------------------------------
# the server


class _TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for request headers: a connection that has not sent a whole
    request head ``HEADER_TIMEOUT`` seconds after it opened (or after its last answer) is closed."""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        cycle = self.cycle
        self.loop.call_later(self.header_timeout + (self.timeout_keep_alive if cycle else 0),
                             self._header_deadline, cycle)

    def _header_deadline(self, armed_cycle: Any) -> None:
        idle = self.cycle is None or getattr(self.cycle, "response_complete", True)
        if self.cycle is armed_cycle and idle and not self.transport.is_closing():
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server that, on SIGTERM/SIGINT, also cancels the viewer's jobs at once and makes sure the
    process ends within ``exit_deadline`` seconds."""

    def __init__(self, config: uvicorn.Config, viewer: Viewer, exit_deadline: float) -> None:
        super().__init__(config)
        self._viewer = viewer
        self._exit_deadline = exit_deadline
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._viewer.jobs.shutdown(wait=False)
        if self._watchdog is None:
            self._watchdog = threading.Timer(self._exit_deadline, os._exit, args=(128 + int(sig),))
            self._watchdog.daemon = True
            self._watchdog.start()


def _fixed_mmap_threshold(threshold: int = 1 << 20) -> None:
    """Keep glibc from raising its mmap threshold after large frees (``mallopt(M_MMAP_THRESHOLD)``).

    By default glibc raises the threshold to the size of each large block it frees, so the 16 MiB blocks
    Pillow decodes images into come from the heap afterwards and fragment it: twenty 4096 x 4096 uploads
    then leave the process hundreds of MB larger. With a fixed threshold every large block is its own
    mapping, returned to the system when freed. Ignored where there is no glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening (connections wait until the server accepts them).

    Raises:
        ValueError: the port is in use or the address cannot be bound (a one-line message).
    """
    try:
        family = socket.AF_INET6 if isinstance(ipaddress.ip_address(host.strip("[]")), ipaddress.IPv6Address) \
            else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is in use: stop the other server or pick another --port"
                             ) from None
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)  # connections made before the server runs wait in the backlog
    sock.set_inheritable(True)
    return sock


def run_server(
    checkpoint: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_remote: bool = False,
    allowed_hosts: Iterable[str] = (),
    log_level: str = "info",
    body_timeout: float = BODY_TIMEOUT,
    exit_deadline: float = EXIT_DEADLINE,
    threads: int | None = None,
    **viewer_options: Any,
) -> None:
    """Bind the port, load the checkpoint and data, print the viewer's address and serve until stopped.

    Args:
        checkpoint: A checkpoint file, run folder or shipped name.
        host: Address to listen on; anything but a loopback address needs ``allow_remote``. A loopback
            address other than ``127.0.0.1`` (``127.0.0.2``, ...) is accepted in ``Host`` headers too.
        port: Port to listen on (it is bound before anything is loaded or printed).
        allow_remote: Allow a non-loopback ``host`` (prints a warning: the viewer has no authentication).
        allowed_hosts: More ``Host`` header values to accept (the bound address is accepted already).
        log_level: uvicorn's log level.
        body_timeout: Seconds a client has to send a request body.
        exit_deadline: Seconds from SIGTERM/SIGINT to the process's exit at the latest.
        threads: PyTorch intra-op threads (default: the CPU count divided by the job workers plus one, so that
            the jobs leave a core to the server).
        **viewer_options: ``data``, ``split``, ``cache``, ``limit``, ``workers``, ``device``, ... (see
            :class:`~netvis.app.serve.viewer.Viewer`).

    Raises:
        ValueError: a non-loopback ``host`` without ``allow_remote``, a port in use, a bad checkpoint or data set.
    """
    check_bind(host, allow_remote)
    extra = list(allowed_hosts)
    if host not in ("0.0.0.0", "::", "") and host.lower() not in ("localhost", "127.0.0.1", "::1", "[::1]"):
        extra.append(host)  # the bound address itself (127.0.0.2, a LAN address with --allow-remote)
    sock = bind_socket(host, port)
    try:
        if allow_remote:
            print(
                f"WARNING: the viewer listens on {host}:{port} for the network. It has no authentication: anyone "
                "who can reach this port can run computations and read its results. Browsers must use one of "
                f"the allowed host names: {', '.join(sorted(allowed_host_headers(port, extra)))} "
                "(add more with --allowed-host).",
                file=sys.stderr,
            )
        workers = int(viewer_options.get("workers", 2))
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // (workers + 1)))
        _fixed_mmap_threshold()
        viewer = Viewer(checkpoint, job_nice=10, **viewer_options)
    except BaseException:
        sock.close()
        raise
    app = create_app(viewer, port=port, allowed_hosts=extra, body_timeout=body_timeout, decode_nice=10)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    print(f"netvis viewer: http://{shown}:{port}/  (checkpoint {viewer.checkpoint.path}, data {viewer.data_name}, "
          f"{len(viewer.images)} images, cache {viewer.cache.root})", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, server_header=False, http=_TimedH11Protocol,
                            timeout_keep_alive=5, timeout_graceful_shutdown=2,
                            h11_max_incomplete_event_size=64 * 1024)
    server = _Server(config, viewer, exit_deadline)
    try:
        server.run(sockets=[sock])
    finally:
        viewer.close(timeout=1.0)
        sock.close()
