"""uvicorn on a socket bound beforehand: a taken port fails at once, and port 0 names the port the
system chose."""

import signal
import socket
import sys


def bind(host, port):
    """A TCP socket bound to (host, port), not yet listening; OSError naming the address when it
    cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"--host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def url(sock):
    """http://HOST:PORT of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app, sock, banner):
    """Answer on `sock` until SIGINT or SIGTERM, then stop cleanly (requests under way finish)
    -> the name of the signal that stopped it. `banner` is printed, with the URL, once the socket
    listens."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(f"{banner} on {url(sock)} (Ctrl-C stops)", flush=True)

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=10
    )
    received = []

    def note(signum, frame):  # uvicorn re-sends the signal that stopped it: noted, not fatal
        received.append(signum)

    saved = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        Server(config).run(sockets=[sock])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        sock.close()
    sys.stdout.flush()
    return signal.Signals(received[-1]).name if received else None
