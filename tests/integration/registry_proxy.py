"""A TCP proxy in front of the testbed's real registry, for registry faults: slow uploads (a push
that takes seconds, to act during it) and outages (every open connection cut, every new request
answered 503 for a while, as a restarting registry or its load balancer does).

It listens on 127.0.0.1:5001, the address the testbed's buildkitd already allows plain HTTP to.
"""

from __future__ import annotations

import socket
import threading
import time

UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ThrottlingProxy:
    """A TCP proxy in front of the real registry that slows uploads, so a push takes seconds.

    It listens on 127.0.0.1:5001, the address the testbed's buildkitd already allows plain HTTP to,
    and notes the moment the first blob upload starts: then the build is certainly pushing.
    """

    def __init__(self, upstream=("127.0.0.1", 5000), listen=("127.0.0.1", 5001), bytes_per_second=1_000_000):
        self.upstream, self.rate = upstream, bytes_per_second
        self.upload_started = threading.Event()
        self.server = socket.create_server(listen)
        self.server.settimeout(0.2)
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = []
        self.down_until = 0.0  # monotonic time; while before it, the registry is "down"
        self.refused = 0  # requests answered 503 during outages
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def outage(self, seconds: float) -> None:
        """From now on for `seconds`: cut every open connection and answer every new one 503."""
        self.down_until = time.monotonic() + seconds
        for s in list(self.sockets):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                continue
            if time.monotonic() < self.down_until:
                threading.Thread(target=self._unavailable, args=(client,), daemon=True).start()
                continue
            upstream = socket.create_connection(self.upstream)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, upload: bool):
        try:
            while True:
                data = source.recv(16384)
                if not data:
                    break
                if upload:
                    if b"/blobs/uploads/" in data and data.startswith((b"POST ", b"PATCH ", b"PUT ")):
                        self.upload_started.set()
                    time.sleep(len(data) / self.rate)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, target):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _unavailable(self, client: socket.socket) -> None:
        try:
            client.settimeout(2)
            client.recv(65536)  # the request head
            client.sendall(UNAVAILABLE)
            self.refused += 1
        except OSError:
            pass
        finally:
            client.close()

    def close(self):
        self.stopped.set()
        self.thread.join()
        self.server.close()
        for s in self.sockets:
            s.close()
