"""`kb serve --workers N`: N processes on one port, each accepting on a socket of its own.

uvicorn's workers share one listening socket, and the kernel wakes the same
idle worker for each new connection: 8 kept-alive connections opened 20 ms
apart landed 8 and 0 on two idle workers in 3 trials of 6 (5/3, 5/3, 4/4 in
the others). A game keeps its connections open, so one worker answered most
players while the other idled. With SO_REUSEPORT (Linux) each worker listens
on its own socket and the kernel spreads connections over them by a hash of
their addresses. Where that is missing, uvicorn's shared socket is used.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading

from kb.errors import KBError


def spreads_connections() -> bool:
    """Whether the kernel balances connections over sockets sharing a port (Linux's SO_REUSEPORT)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def run_workers(workers: int, host: str, port: int, app_factory: str) -> None:
    """Run ``workers`` processes of ``app_factory`` ("module:function") on host:port until SIGINT or
    SIGTERM, which stops them all.

    Raises:
        KBError: the port is taken, or a worker died (the others are stopped: a server missing a worker
            would answer on fewer cores than asked, unnoticed).
    """
    _check_free(host, port)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(host, port, app_factory), name=f"kb-serve-{i + 1}")
                 for i in range(workers)]
    for process in processes:
        process.start()
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        for process in processes:
            if process.is_alive():
                process.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ended = multiprocessing.connection.wait([process.sentinel for process in processes])
        died = None if stopping else next(p for p in processes if p.sentinel in ended)
        stop(None, None)
        for process in processes:
            process.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if died is not None:
        raise KBError(f"kb serve worker {died.name} exited with code {died.exitcode}; stopped the others")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _check_free(host: str, port: int) -> None:
    """Refuse a port another server holds: the workers' shared sockets would join one that also shares it."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise KBError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _stop_with_parent() -> None:
    """SIGTERM this worker when its `kb serve` process ends: killed (SIGKILL, an OOM kill), it cannot
    stop its workers, which would go on holding the port, and a restarted server would find it taken."""
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own shutdown: it closes its connections


def _worker(host: str, port: int, app_factory: str) -> None:
    import uvicorn

    threading.Thread(target=_stop_with_parent, name="kb-serve-parent-watch", daemon=True).start()
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app_factory, factory=True, host=host, port=port, log_level="info", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
