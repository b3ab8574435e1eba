"""A TCP relay between Kafka clients and a broker that can lose one produce acknowledgement: the
network edge of the exactly-once tests (the broker and the clients are the real ones).

Armed with :meth:`LossyLink.lose_next_produce_ack`, it forwards the next Produce request to the broker,
waits for the broker's answer (so the message is in the log) and then, instead of forwarding the
answer, closes both connections — a broker killed between writing a message and acknowledging it,
as seen by the client."""

from __future__ import annotations

import socket
import struct
import threading

PRODUCE = 0  # Kafka API key


def _read_frame(sock: socket.socket) -> bytes | None:
    """One length-prefixed Kafka frame (size included), None at end of stream."""
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    body = _read_exactly(sock, struct.unpack(">i", head)[0])
    return None if body is None else head + body


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


class LossyLink:
    def __init__(self, listen_port: int, broker_port: int) -> None:
        self.broker_port = broker_port
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self._armed = threading.Event()
        self.acks_lost = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_next_produce_ack(self) -> None:
        self._armed.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.broker_port))
            self._sockets += [client, broker]
            doomed: dict[str, int] = {}  # correlation id of the produce whose answer is to be lost
            threading.Thread(target=self._requests, args=(client, broker, doomed), daemon=True).start()
            threading.Thread(target=self._responses, args=(broker, client, doomed), daemon=True).start()

    def _requests(self, client: socket.socket, broker: socket.socket, doomed: dict[str, int]) -> None:
        while (frame := _read_frame(client)) is not None:
            api_key, _, correlation = struct.unpack(">hhi", frame[4:12])
            if api_key == PRODUCE and self._armed.is_set():
                self._armed.clear()
                doomed["id"] = correlation
            try:
                broker.sendall(frame)
            except OSError:
                break
        self._close(client, broker)

    def _responses(self, broker: socket.socket, client: socket.socket, doomed: dict[str, int]) -> None:
        while (frame := _read_frame(broker)) is not None:
            if doomed.get("id") == struct.unpack(">i", frame[4:8])[0]:
                self.acks_lost += 1  # written by the broker, never acknowledged to the client
                break
            try:
                client.sendall(frame)
            except OSError:
                break
        self._close(client, broker)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.server.close()
        self._close(*self._sockets)
