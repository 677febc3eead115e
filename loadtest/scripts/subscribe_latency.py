#!/usr/bin/env python3
"""SUBSCRIBE -> SUBSCRIBED latency on a cold root (new on the node: with
--routing roots the gateway waits for Redis to confirm its SSUBSCRIBE) versus a
warm one (a root the connection's shard already holds: no wait).

    python3 loadtest/scripts/subscribe_latency.py HOST:PORT JWT_SECRET [N]

Standard library only; one connection, N cold and N warm subscriptions, printed
as p50/p99/max in milliseconds. Run it against `--routing roots` and
`--routing pattern` nodes to compare (loadtest/RESULTS.md has a run); start
them with a generous `--rate-limit` (e.g. 100000/1s): 2N+1 commands are sent."""
import base64, hashlib, hmac, json, os, socket, struct, sys, time


def token(secret, sub):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    h = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = enc(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    sig = enc(hmac.new(secret.encode(), h + b"." + p, hashlib.sha256).digest())
    return (h + b"." + p + b"." + sig).decode()


def frame(text):
    b, m = text.encode(), os.urandom(4)
    n = len(b)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
    return head + m + bytes(c ^ m[i % 4] for i, c in enumerate(b))


class Ws:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.s.sendall(b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(4096)
        self.buf = self.buf.split(b"\r\n\r\n", 1)[1]

    def recv(self):
        while True:
            b = self.buf
            if len(b) >= 2:
                n, at = b[1] & 0x7F, 2
                if n == 126:
                    n, at = (struct.unpack(">H", b[2:4])[0], 4) if len(b) >= 4 else (None, 4)
                elif n == 127:
                    n, at = (struct.unpack(">Q", b[2:10])[0], 10) if len(b) >= 10 else (None, 10)
                if n is not None and len(b) >= at + n:
                    msg, self.buf = b[at:at + n], b[at + n:]
                    return json.loads(msg)
            self.buf += self.s.recv(65536)

    def until(self, ty):
        while True:
            m = self.recv()
            if m["type"] == ty:
                return m

    def send(self, obj):
        self.s.sendall(frame(json.dumps(obj)))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    addr, secret = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    ws = Ws(addr)
    ws.send({"type": "HELLO", "payload": {"token": token(secret, "latency")}})
    ws.until("HELLO_ACK")
    run = f"{os.getpid()}x{int(time.time())}"
    ws.send({"type": "SUBSCRIBE", "payload": {"channels": [f"live:warm{run}"]}})
    ws.until("SUBSCRIBED")
    result = {}
    for kind in ("cold", "warm"):
        lat = []
        for i in range(n):
            ch = f"live:cold{run}n{i}" if kind == "cold" else f"live:warm{run}:c{i}"
            t = time.perf_counter()
            ws.send({"type": "SUBSCRIBE", "payload": {"channels": [ch]}})
            ws.until("SUBSCRIBED")
            lat.append((time.perf_counter() - t) * 1000)
        result[kind] = lat
        print(f"{kind}: n={n} p50 {pct(lat, .5):.3f} ms  p99 {pct(lat, .99):.3f} ms  max {max(lat):.3f} ms")


if __name__ == "__main__":
    main()
