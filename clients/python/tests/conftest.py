"""The real ``switchboard`` binary (``SWITCHBOARD_BIN``, else the workspace's debug build) on a free
port of 127.0.0.1, stopped by PID; HS256 tokens signed with its secret; a TCP proxy that can cut
connections or the first answer of a request."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

SECRET = "python-client-test-secret, 32+ bytes long"
ADMIN = "python-client-admin-key"
ROOT = Path(__file__).resolve().parents[3]


def binary() -> str:
    return os.environ.get("SWITCHBOARD_BIN") or str(ROOT / "target" / "debug" / "switchboard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int):
        self.port = port
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/ws"
        args = [binary(), "--listen", f"127.0.0.1:{port}", "--jwt-secret", SECRET, "--admin-key", ADMIN,
                "--agent-pace-ms", "20"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            lines.append(line)
            if "listening on" in line:
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the server did not start:\n" + "".join(lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server(free_port())
    yield s
    s.stop()


def token(
    user: str, tenant: str = "acme", ttl: int = 3600, rooms: list[str] | None = None, tier: str = "enterprise",
) -> str:
    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    claims = {"sub": user, "tenant": tenant, "tier": tier, "roles": ["member"],
              "rooms": rooms or [], "exp": int(time.time()) + ttl}
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


class Proxy:
    """Forwards 127.0.0.1:port to the server. ``drop()`` cuts every connection; with
    ``cut_first_answer`` the first answer the server sends is swallowed and that connection cut
    (the request was handled, the caller never hears of it); ``hold_new()`` keeps new
    connections waiting, unanswered, until ``release_new()``."""

    def __init__(self, target: int):
        self.target = target
        self.cut_first_answer = False
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def start(self) -> "Proxy":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws"
        return self

    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.closed:
            down_w.transport.abort()
            return
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [down_w, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, answers: bool) -> None:
            try:
                while data := await r.read(65536):
                    if answers and self.cut_first_answer:
                        self.cut_first_answer = False
                        break
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                for x in (down_w, up_w):
                    x.close()

        await asyncio.gather(pipe(down_r, up_w, False), pipe(up_r, down_w, True))

    def drop(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    def hold_new(self) -> None:
        """New connections wait, unanswered, until ``release_new()``."""
        self.gate = self.gate or asyncio.Event()

    def release_new(self) -> None:
        """Lets the held connections through to the server, and any new one from now on."""
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.set()

    async def close(self) -> None:
        self.closed = True
        self.release_new()
        self.drop()
        self.server.close()


@pytest.fixture
async def proxy(server):
    p = await Proxy(server.port).start()
    yield p
    await p.close()
