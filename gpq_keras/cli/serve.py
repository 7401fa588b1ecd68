"""`gpq serve`: an index searched over HTTP, a JSON API and a web page (the `[serve]` extra)."""

import argparse
import sys

from gpq_keras.cli.common import (
    MAX_PIXELS,
    CLIError,
    add_command,
    load_model,
    positive_int,
    seconds,
)

MAX_UPLOAD_BYTES = (
    20 * 2**20
)  # gpq_keras.server.app.MAX_UPLOAD_BYTES, written out: parsing is cheap


def port_number(text):
    """An argparse type: a TCP port, 0 to 65535 (0: any free one)."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return int(text)


def add_serve(sub):
    p = add_command(
        sub,
        "serve",
        "search an index over HTTP until stopped: a web page (GET /) and a JSON API "
        "(POST /search, GET /items/ID/similar, GET /items/ID/image, GET /healthz); needs "
        "gpq-keras[serve]",
        "gpq serve --model runs/photos/model.keras --index photos.npz --port 8080",
        run_serve,
    )
    p.add_argument("--model", required=True, help="the GPQ .keras file that built the index")
    p.add_argument(
        "--index",
        required=True,
        help="a PQIndex .npz of files; reloaded when the file changes, and on SIGHUP",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (127.0.0.1: this machine only; another address lets the "
        "network search the index and read its files)",
    )
    p.add_argument(
        "--port",
        type=port_number,
        default=8080,
        help="the port (8080; 0: any free one, named in the line 'serving ... on URL')",
    )
    p.add_argument(
        "-k", type=positive_int, default=10, help="results when a request gives no k (10)"
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=MAX_PIXELS,
        metavar="N",
        help="refuse (413) an upload whose header declares more than N pixels, before decoding "
        f"it ({MAX_PIXELS:,})",
    )
    p.add_argument(
        "--max-upload-bytes",
        type=positive_int,
        default=MAX_UPLOAD_BYTES,
        metavar="N",
        help=f"refuse (413) a request body of more than N bytes ({MAX_UPLOAD_BYTES:,})",
    )
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=32,
        help="concurrent queries encoded and searched together, at most (32)",
    )
    p.add_argument(
        "--batch-wait",
        type=seconds,
        default=0.005,
        metavar="SECONDS",
        help="how long the first query of a batch waits for others (0.005)",
    )
    p.add_argument(
        "--reload-interval",
        type=seconds,
        default=2.0,
        metavar="SECONDS",
        help="check the index file for a change this often (2; 0: only on SIGHUP)",
    )
    p.set_defaults(strategy="one")  # one device: a request's batch is small


def run_serve(args):
    try:
        import python_multipart  # noqa: F401  (multipart uploads, as the page sends them)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise CLIError(
            f"gpq serve needs the [serve] extra ({exc.name} is not installed): "
            "pip install 'gpq-keras[serve]'"
        ) from None
    import numpy as np

    from gpq_keras.files import display_path
    from gpq_keras.server import LiveIndex, create_app
    from gpq_keras.server.app import LOOPBACK_NAMES
    from gpq_keras.server.run import bind, serve

    sock = bind(args.host, args.port)  # a taken port fails before the model loads
    try:
        model, _ = load_model(args)
        live = LiveIndex(args.index, model)
        shape = tuple(int(v) for v in model.gpq_config.image_shape)
        for n in (1, 2):  # trace the model's predict step before the first request
            model.encode(np.zeros((n, *shape), np.uint8))
        app = create_app(
            model,
            live,
            k=args.k,
            max_pixels=args.max_pixels,
            max_upload_bytes=args.max_upload_bytes,
            max_batch=args.max_batch,
            batch_wait=args.batch_wait,
            reload_interval=args.reload_interval,
            local_only=args.host.strip("[]").lower() in LOOPBACK_NAMES,
        )
    except BaseException:
        sock.close()
        raise
    stopped_by = serve(
        app,
        sock,
        f"serving {live.current.ntotal} items of {display_path(args.index)}",
    )
    print(f"gpq serve: stopped{f' ({stopped_by})' if stopped_by else ''}", file=sys.stderr)
