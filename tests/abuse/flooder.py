#!/usr/bin/env python3
"""A hostile chat client for the fairness test, in a process of its own.

    flooder.py HOST PORT PATH SOURCE_ADDRESS

Connects from SOURCE_ADDRESS with the extended protocol and writes chat frames as fast as
the socket takes them, reading (and counting) whatever comes back; when the server closes
the connection it reconnects at once, and after a refused handshake (429) it tries again
at once too. Runs until SIGTERM, then prints one JSON line of counts and exits 0.
Standard library only.
"""
import base64
import json
import os
import select
import signal
import socket
import struct
import sys

stopping = False


def stop(_signum, _frame):
    global stopping
    stopping = True


def masked_text(payload):
    mask = os.urandom(4)
    head = bytearray([0x81])
    if len(payload) < 126:
        head.append(0x80 | len(payload))
    else:
        head.append(0x80 | 126)
        head += struct.pack(">H", len(payload))
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Frames:
    """The server's (unmasked) frames out of a byte stream."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data):
        self.buffer += data
        frames = []
        while len(self.buffer) >= 2:
            length = self.buffer[1] & 0x7F
            at = 2
            if length == 126:
                if len(self.buffer) < 4:
                    break
                length = struct.unpack(">H", self.buffer[2:4])[0]
                at = 4
            elif length == 127:
                if len(self.buffer) < 10:
                    break
                length = struct.unpack(">Q", self.buffer[2:10])[0]
                at = 10
            if len(self.buffer) < at + length:
                break
            frames.append((self.buffer[0] & 0x0F, self.buffer[at:at + length]))
            self.buffer = self.buffer[at + length:]
        return frames


def handshake(sock, host, port, path):
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Protocol: roomcast.v1\r\n\r\n"
    )
    sock.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0, b""
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ", 2)[1]), rest


def flood(sock, leftover, burst, counts):
    """Writes frames until the server closes; the close code, or None."""
    frames = Frames()
    pending = memoryview(burst)
    sock.setblocking(False)
    incoming = [leftover] if leftover else []
    while not stopping:
        for data in incoming:
            for opcode, payload in frames.feed(data):
                if opcode == 8:
                    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                if opcode == 1:
                    counts["frames_received"] += 1
                    if b"rate_limited" in payload:
                        counts["rate_limited_frames"] += 1
        incoming = []
        readable, writable, _ = select.select([sock], [sock], [], 1.0)
        if readable:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                return None
            if data == b"":
                return None
            if data:
                incoming.append(data)
        if writable:
            try:
                sent = sock.send(pending)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return None
            counts["bytes_sent"] += sent
            pending = pending[sent:]
            if not pending:
                pending = memoryview(burst)
    return None


def main():
    host, port, path, source = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    signal.signal(signal.SIGTERM, stop)
    frame = masked_text(json.dumps({"message": "flood " + "x" * 40}).encode())
    burst = frame * 64
    counts = {
        "connections": 0,
        "refused": {},
        "closes": {},
        "frames_received": 0,
        "rate_limited_frames": 0,
        "bytes_sent": 0,
    }
    while not stopping:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((source, 0))
            sock.connect((host, port))
            status, leftover = handshake(sock, host, port, path)
            if status != 101:
                counts["refused"][str(status)] = counts["refused"].get(str(status), 0) + 1
                continue
            counts["connections"] += 1
            code = flood(sock, leftover, burst, counts)
            key = str(code) if code is not None else "none"
            counts["closes"][key] = counts["closes"].get(key, 0) + 1
        except OSError as error:
            counts["refused"][type(error).__name__] = counts["refused"].get(type(error).__name__, 0) + 1
        finally:
            sock.close()
    counts["frames_sent"] = counts["bytes_sent"] // len(frame)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
