"""Measure cspd's own overhead per API call, with in-memory LVM and LIO stand-ins.

The figures leave out lvm2 and configfs, so they show what the daemon adds:
HTTPS, authentication, validation, the state store (SQLite with
synchronous=FULL) and the provider logic. The server listens on 127.0.0.1
only.

    python3 -m tests.bench.api_overhead [--volumes 500]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cspd.api.app import make_app
from cspd.auth import hash_password
from cspd.config import parse_config
from cspd.store import DB_NAME, Store
from cspd.tls import certificate_paths, server_context
from tests.fakes.dm import FakeDeviceMapper
from tests.fakes.lio import FakeLio
from tests.fakes.lvm import FakeLvm

PASSWORD = "benchmark-password"
GIB = 1 << 30


async def timed(samples: list[float], call: Callable[[], Awaitable[Any]]) -> Any:
    started = time.perf_counter()
    result = await call()
    samples.append(time.perf_counter() - started)
    return result


def describe(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return (
        f"{name:<28} n={len(samples):<5} median={statistics.median(samples) * 1000:7.2f} ms "
        f"p95={p95 * 1000:7.2f} ms"
    )


async def run(volume_count: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        config = parse_config(
            f'[state]\ndir = "{state}"\n[api]\nlisten = "127.0.0.1"\n'
            '[iscsi]\nportals = ["127.0.0.1"]\n'
        )
        store = Store(Path(state) / DB_NAME)
        await store.open()
        await store.add_user("bench", hash_password(PASSWORD))
        await store.close()
        app = make_app(
            config,
            lvm=FakeLvm(pool_size=1 << 50),  # type: ignore[arg-type]
            lio=FakeLio(),  # type: ignore[arg-type]
            dm=FakeDeviceMapper(),  # type: ignore[arg-type]
            addresses=["127.0.0.1"], portals=["127.0.0.1"], own_names=frozenset(),
        )
        cert, key = certificate_paths(config, ["127.0.0.1"])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(cert, key))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"https://127.0.0.1:{port}/csp/containers/v1"
        client_ssl = ssl.create_default_context()
        client_ssl.check_hostname = False
        client_ssl.verify_mode = ssl.CERT_NONE

        # A new connection per request, as the HPE CSI driver makes them.
        connector = aiohttp.TCPConnector(ssl=client_ssl, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            login: list[float] = []
            response = await timed(login, lambda: session.post(
                f"{base}/tokens", json={"username": "bench", "password": PASSWORD}))
            token = (await response.json())["session_token"]
            headers = {"x-auth-token": token}

            async def request(method: str, path: str, body: Any = None) -> Any:
                async with session.request(
                    method, base + path, json=body, headers=headers
                ) as reply:
                    assert reply.status in (200, 204), await reply.text()
                    return await reply.json() if reply.status == 200 else None

            creates: list[float] = []
            ids = []
            for i in range(volume_count):
                volume = await timed(
                    creates, lambda i=i: request("POST", "/volumes",
                                                 {"name": f"pvc-{i}", "size": GIB}))
                ids.append(volume["id"])
            await request("POST", "/hosts", {"uuid": "n1", "name": "n1",
                                             "iqns": ["iqn.2026-12.io.example:n1"]})
            publishes: list[float] = []
            for volume_id in ids[:100]:
                await timed(publishes, lambda v=volume_id: request(
                    "PUT", f"/volumes/{v}/actions/publish",
                    {"host_uuid": "n1", "access_protocol": "iscsi"}))
            lists: list[float] = []
            for _ in range(20):
                await timed(lists, lambda: request("GET", "/volumes"))
            gets: list[float] = []
            for volume_id in ids[:200]:
                await timed(gets, lambda v=volume_id: request("GET", f"/volumes/{v}"))

        await runner.cleanup()
        print(describe("POST /tokens (scrypt)", login))
        print(describe("POST /volumes", creates))
        print(describe("PUT .../publish", publishes))
        print(describe(f"GET /volumes ({volume_count})", lists))
        print(describe("GET /volumes/{id}", gets))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=500, help="volumes to create")
    args = parser.parse_args()
    asyncio.run(run(args.volumes))


if __name__ == "__main__":
    main()
