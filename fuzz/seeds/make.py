#!/usr/bin/env python3
"""Writes the hand-made seeds of each fuzz target into ../corpus/<target>/ (named by hash)."""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")

UPGRADE = (b"Host: chat.example\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def request_head():
    yield b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    yield b"HEAD / HTTP/1.0\r\n\r\n"
    yield b"GET /ws/chat/lobby/?since=4&epoch=ab.1 HTTP/1.1\r\n" + UPGRADE + b"\r\n"
    yield b"GET /ws/chat/lobby/?recent=50 HTTP/1.1\r\n" + UPGRADE + b"Origin: https://chat.example:443\r\n\r\n"
    yield b"GET /ws/echo HTTP/1.1\r\n" + UPGRADE + b"Sec-WebSocket-Protocol: roomcast.v1\r\n\r\n"
    yield b"GET /ws/chat/a/ HTTP/1.1\r\n" + UPGRADE + b"Host: other\r\n\r\n"
    yield b"GET /ws/chat/a/ HTTP/1.0\r\n" + UPGRADE + b"\r\n"
    yield b"GET http://example.com/metrics HTTP/1.1\r\n\r\n"
    yield b"GET /chat/room.1_x-y/ HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 192.0.2.4\r\n\r\n"
    yield b"POST /api/rooms/lobby/messages HTTP/1.1\r\nAuthorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}"
    yield b"GET / HTTP/1.1\r\nX-Folded: a\r\n  b\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nX-Nul: a\x00b\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nX-Latin: caf\xe9\r\n\r\n"
    yield b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    yield b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(33)) + b"\r\n"
    yield b"GET /healthz HTTP/1.1\r\n\r\nGET /readyz HTTP/1.1\r\n\r\n"
    yield b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 8000\r\nGET / HTTP/1.1\r\n\r\n"
    yield b"PROXY TCP6 2001:db8::7 ::1 51000 8000\r\nGET / HTTP/1.1\r\n\r\n"
    yield b"PROXY UNKNOWN\r\n"
    yield V2 + bytes([0x21, 0x11, 0, 12, 192, 0, 2, 9, 10, 0, 0, 1, 0xC7, 0x38, 0x1F, 0x40]) + b"GET / HTTP/1.1\r\n\r\n"
    yield V2 + bytes([0x21, 0x21, 0, 36]) + bytes(range(32)) + b"\x01\x02\x03\x04"
    yield V2 + bytes([0x20, 0x00, 0, 0])
    yield b"GET /ws/chat/lobby/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n"


def chat_decoder():
    yield b'{"message":"hello"}'
    yield b'{"message":"hi","nick":"x","extra":[1,2]}'
    yield b'{"message":3}'
    yield b'{"text":"hi"}'
    yield b'["message"]'
    yield b'"message"'
    yield b'not json'
    yield b'{"message":"\\u0000\\n\\"\\\\ \\ud83c\\udf89"}'
    yield b'{"message":"\\ud800"}'
    yield b'{"message":"a","message":"b"}'
    yield b'{"type":"refresh","token":"t.o.k"}'
    yield b'{"type":"refresh"}'
    yield b'{"type":"join","message":"x"}'
    yield b'{"type":null,"message":"x"}'
    yield b'{"message":"' + "é ✓ 🎉".encode() + b'"}'
    yield b'{"message":"x"} trailing'
    yield b'{"message":' + b'[' * 200 + b']' * 200 + b'}'
    yield b'\xff\xfe{"message":"x"}'
    yield b'{"message":"' + b"\x01\x1f\x7f" + b'"}'
    yield b'  {"message" : "spaced" }  '


def frame(fin, opcode, payload, mask=b"\x11\x22\x33\x44", rsv=0, masked=True, length_form=None):
    out = bytearray([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    if form == 7:
        out.append(bit | n)
    elif form == 16:
        out.append(bit | 126)
        out += struct.pack(">H", n)
    else:
        out.append(bit | 127)
        out += struct.pack(">Q", n)
    if masked:
        out += mask
        out += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


def inbound_gate():
    # Four bytes of knobs first: max frame (16 + 64 * b), leftover split (16 * b), socket
    # chunk (b + 1), read size (4 * b + 1).
    knobs = [bytes([255, 0, 255, 255]), bytes([255, 3, 0, 10]), bytes([40, 1, 7, 200])]
    text = frame(True, 1, b'{"message":"hi"}')
    big = frame(True, 1, bytes(i % 251 for i in range(5000)))
    seqs = [
        text,
        text + frame(True, 9, b"ping") + frame(True, 10, b""),
        big,
        frame(False, 1, b"x" * 3000) + frame(True, 9, b"p") + frame(True, 0, b"y" * 2100),
        frame(True, 2, b"\x00" * 2049),
        frame(True, 1, b"z" * 300, length_form=64),
        frame(True, 8, b"\x03\xe8bye"),
        frame(True, 1, b"abc", rsv=0x40),
        frame(True, 1, b"abc", masked=False),
        frame(True, 9, b"p" * 126),
        frame(False, 9, b"p"),
        frame(True, 3, b"x"),
        frame(True, 11, b"x"),
        text + big[:2500],
        frame(True, 1, b"q" * 9000)[:10],
    ]
    for i, seq in enumerate(seqs):
        yield knobs[i % len(knobs)] + seq


def main():
    for name, make in [("request_head", request_head), ("chat_decoder", chat_decoder),
                       ("inbound_gate", inbound_gate)]:
        folder = os.path.join(CORPUS, name)
        os.makedirs(folder, exist_ok=True)
        for seed in make():
            path = os.path.join(folder, "seed-" + hashlib.sha1(seed).hexdigest()[:16])
            with open(path, "wb") as out:
                out.write(seed)


if __name__ == "__main__":
    main()
