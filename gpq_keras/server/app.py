"""The routes of `gpq serve`, as a Starlette app over a loaded model and a `LiveIndex`.

- `GET /healthz` -> `{"status": "ok", "items": N}`
- `GET /` -> the HTML page
- `POST /search?k=K` (the image as the body, or a multipart field `image`) -> one element of
  `gpq search --json`'s "queries": `{"query": NAME, "results": [{"rank", "id", "distance",
  "source"?, "class"?}]}`
- `GET /items/ID/similar?k=K` -> the same, the item's file (re-encoded) as the query
- `GET /items/ID/image` -> the item's file
- errors -> 4xx `{"error": "one line"}`

A search's answer says in its `X-GPQ-Batch` header how many queries its batch held.
"""

import asyncio
import contextlib
import os
import signal
import stat
import sys

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.routing import Route

from gpq_keras.data.images import DEFAULT_MAX_PIXELS, decode_one, read_image_file
from gpq_keras.files import FileFormatError, display_path
from gpq_keras.server import page
from gpq_keras.server.batching import EmptyIndex, SearchBatcher
from gpq_keras.server.uploads import UploadError, decode_upload, uploaded_image

MAX_UPLOAD_BYTES = 20 * 2**20
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
BATCH_HEADER = "X-GPQ-Batch"  # how many queries the answer's batch held


def error(status, message):
    """The JSON of an error: {"error": one line}."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def create_app(
    model,
    live,
    k=10,
    max_pixels=DEFAULT_MAX_PIXELS,
    max_upload_bytes=MAX_UPLOAD_BYTES,
    max_batch=32,
    batch_wait=0.005,
    reload_interval=2.0,
    local_only=True,
):
    """The ASGI app of `gpq serve` -> a Starlette app.

    Args:
        model: the GPQ model the index was built with.
        live: the `LiveIndex` served; its file is checked for a change every `reload_interval`
            seconds (0: only on SIGHUP, or `live.check()`), and SIGHUP reloads it.
        k: int, results when a request gives no `k`.
        max_pixels: an upload (or an item's file) over this many pixels is refused (413).
        max_upload_bytes: a request body over this many bytes is refused (413).
        max_batch, batch_wait: queries per batch and the wait for them (`SearchBatcher`).
        local_only: refuse a request whose Host header names another host than this machine
            (a page elsewhere reaching 127.0.0.1 through DNS rebinding).
    """
    batcher = SearchBatcher(model, live, max_batch, batch_wait)
    image_shape = tuple(int(v) for v in model.gpq_config.image_shape)
    default_k = int(k)

    def top_k(request):
        text = request.query_params.get("k")
        if text is None:
            return default_k
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise UploadError(400, f"k must be an integer >= 1, got {text!r}")
        return int(text)

    async def answer(image, k_value, name):
        try:
            record, size = await batcher.search(image, k_value, name)
            return JSONResponse(record, headers={BATCH_HEADER: str(size)})
        except EmptyIndex as exc:
            return error(409, exc)

    async def healthz(request):
        return JSONResponse({"status": "ok", "items": live.current.ntotal})

    async def home(request):
        headers = {"Content-Security-Policy": page.CSP, "Cache-Control": "no-cache"}
        return HTMLResponse(page.page(default_k), headers=headers)

    async def search(request):
        k_value = top_k(request)
        name, data = await uploaded_image(request, max_upload_bytes)
        image = await run_in_threadpool(decode_upload, data, image_shape, max_pixels, name)
        return await answer(image, k_value, name)

    def item_file(item_id):
        """The absolute path of item `item_id`'s file, as the index names it (404 otherwise)."""
        index = live.current
        if index.sources is None:
            raise UploadError(404, "the index holds no files (it was built from a data set)")
        try:
            return str(index.source_paths(np.array([item_id], np.int64))[0])
        except (ValueError, OverflowError):  # not an id of the index, or past int64
            raise UploadError(404, f"no item {item_id} in the index") from None

    def read_item(path):
        """The item's file as `gpq search --image` reads it -> uint8 (1, H, W, 3)."""
        return decode_one(path, read_image_file(path, max_pixels), image_shape[:2])[None]

    async def similar(request):
        item_id = request.path_params["item_id"]
        k_value = top_k(request)
        path = item_file(item_id)
        try:
            image = await run_in_threadpool(read_item, path)
        except (FileNotFoundError, FileFormatError, OSError) as exc:
            raise UploadError(404, f"item {item_id}: {exc}") from None
        return await answer(image, k_value, path)

    async def item_image(request):
        item_id = request.path_params["item_id"]
        path = item_file(item_id)
        try:
            info = os.stat(path)
        except OSError:
            raise UploadError(404, f"item {item_id}: {display_path(path)} is gone") from None
        if not stat.S_ISREG(info.st_mode):
            raise UploadError(404, f"item {item_id}: {display_path(path)} is not a regular file")
        return FileResponse(path, headers={"X-Content-Type-Options": "nosniff"})

    async def upload_error(request, exc):
        return error(exc.status, exc)

    async def http_error(request, exc):
        detail = exc.detail
        if exc.status_code in (404, 405):  # routing's: say what was asked
            detail = f"{detail}: {request.method} {request.url.path}"
        response = error(exc.status_code, detail)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def server_error(request, exc):
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"gpq serve: error: {type(exc).__name__}: {message}", file=sys.stderr, flush=True)
        return error(500, f"internal error ({type(exc).__name__})")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(batcher.run())]
        if reload_interval > 0:
            tasks.append(asyncio.create_task(_watch(live, reload_interval)))
        reloads = set()

        def on_hangup():
            task = asyncio.create_task(asyncio.to_thread(live.check, True))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
            hangup = True
        except (AttributeError, NotImplementedError, RuntimeError, ValueError):
            hangup = False  # no SIGHUP (Windows), or not the main thread
        try:
            yield
        finally:
            if hangup:
                loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/healthz", healthz),
            Route("/search", search, methods=["POST"]),
            Route("/items/{item_id:int}/similar", similar),
            Route("/items/{item_id:int}/image", item_image),
        ],
        exception_handlers={
            UploadError: upload_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    app.state.batcher, app.state.live = batcher, live
    return LocalHostOnly(app) if local_only else app


async def _watch(live, interval):
    """Check the index file for a change every `interval` seconds (the load in a thread)."""
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(live.check)


class LocalHostOnly:
    """ASGI middleware: refuse (400) an HTTP request whose Host header is not this machine's name
    (127.0.0.1, localhost, ::1): a page elsewhere cannot reach the server through DNS
    rebinding."""

    def __init__(self, app):
        self.app = app
        self.state = getattr(app, "state", None)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            name = name.strip("[]").lower()
            if name not in LOOPBACK_NAMES:
                response = error(
                    400,
                    f"Host {host!r} is not this machine (the server answers 127.0.0.1 and "
                    "localhost only; see gpq serve --host)",
                )
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
