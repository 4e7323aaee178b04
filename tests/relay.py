"""Test helper: a Unix-socket relay in front of a daemon that can lose a call's answer after the daemon acted on it."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

FRAME_HEADER = 9  # HTTP/2: length (3 bytes), type, flags, stream id (4)
HEADERS = 0x1


class CuttingRelay:
    """Forwards connections from `path` to the daemon's socket. Once armed (cut_on_answer), the first
    response HEADERS frame of a call (the daemon has finished the call and starts answering) is not
    forwarded: every connection is closed and the relay stops listening, as when a daemon dies between
    committing a write and sending its answer. `cut` is set when that happened."""

    def __init__(self, upstream: str, path: Path):
        self.upstream, self.path = upstream.removeprefix("unix:"), path
        self.address = f"unix:{path}"
        self.armed, self.cut = threading.Event(), threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_on_answer(self) -> None:
        self.armed.set()

    def close(self) -> None:
        with self._lock:
            self.cut.set()
            for s in [self._listener, *self._sockets]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        if self.path.exists():
            os.unlink(self.path)

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            daemon = socket.socket(socket.AF_UNIX)
            daemon.connect(self.upstream)
            with self._lock:
                self._sockets += [client, daemon]
            threading.Thread(target=self._pump, args=(client, daemon), daemon=True).start()
            threading.Thread(target=self._answers, args=(daemon, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def _answers(self, daemon: socket.socket, client: socket.socket) -> None:
        # The daemon's side of the connection, frame by frame, so that a cut falls exactly before an answer.
        buffer = b""
        try:
            while data := daemon.recv(65536):
                buffer += data
                while len(buffer) >= FRAME_HEADER:
                    size = FRAME_HEADER + int.from_bytes(buffer[:3], "big")
                    if len(buffer) < size:
                        break
                    kind, stream = buffer[3], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    if self.armed.is_set() and kind == HEADERS and stream:
                        self.close()
                        return
                    client.sendall(buffer[:size])
                    buffer = buffer[size:]
        except OSError:
            pass
