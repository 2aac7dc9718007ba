"""API tier: the real application through aiohttp's test client, on in-memory adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cspd.api.app import make_app
from cspd.auth import hash_password
from cspd.config import parse_config
from cspd.store import DB_NAME, Store
from tests.fakes.dm import FakeDeviceMapper
from tests.fakes.lio import FakeLio
from tests.fakes.lvm import FakeLvm

USERNAME = "admin"
PASSWORD = "correct horse battery"
PREFIX = "/csp/containers/v1"
HOST_IQN = "iqn.1994-05.com.redhat:node1"

CONFIG_TOML = """
[state]
dir = "{state}"
[tokens]
failed_login_delay = 0.05
[lvm]
volume_group = "cspd"
thin_pool = "pool"
max_data_percent = 90
max_metadata_percent = 80
[iscsi]
iqn_prefix = "iqn.2026-12.io.example.cspd"
portals = ["192.0.2.10", "192.0.2.11"]
"""


@dataclass
class Api:
    """A logged-in client with the adapters behind it, for checks on both sides."""

    client: TestClient
    lvm: FakeLvm
    lio: FakeLio
    dm: FakeDeviceMapper
    store: Store
    token: str

    def headers(self) -> dict[str, str]:
        return {"x-auth-token": self.token, "Content-Type": "application/json"}

    async def call(
        self, method: str, path: str, body: Any = None, *, expect: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send a request under the /csp prefix; returns (status, decoded JSON or None)."""
        response = await self.client.request(
            method, PREFIX + path, json=body, headers=headers if headers is not None
            else self.headers(),
        )
        text = await response.text()
        data = None
        if text:
            data = await response.json(content_type=None)
        if expect is not None:
            assert response.status == expect, f"{method} {path}: {response.status} {text}"
        return response.status, data

    async def create_volume(self, name: str = "pvc-1", size: int = 1 << 30, **extra: Any) -> Any:
        _, volume = await self.call(
            "POST", "/volumes", {"name": name, "size": size, **extra}, expect=200
        )
        return volume

    async def register_host(self, uuid: str = "host-1", **extra: Any) -> Any:
        body = {"uuid": uuid, "name": f"{uuid}.example", "iqns": [HOST_IQN], **extra}
        _, host = await self.call("POST", "/hosts", body, expect=200)
        return host


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[[str], Any]:
    def make(extra: str = "") -> Any:
        return parse_config(CONFIG_TOML.format(state=tmp_path / "state") + extra)

    return make


AppFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    config_factory: Callable[[str], Any],
) -> AsyncIterator[AppFactory]:
    async def make(extra_config: str = "", login: bool = True) -> Api:
        config = config_factory(extra_config)
        store = Store(config.state_dir / DB_NAME)
        lvm, lio, dm = FakeLvm(), FakeLio(), FakeDeviceMapper()
        await store.open()
        if not await store.get_user(USERNAME):
            await store.add_user(USERNAME, hash_password(PASSWORD))
        await store.close()
        store = Store(config.state_dir / DB_NAME)
        app = make_app(
            config, lvm=lvm, lio=lio, dm=dm, store=store,
            addresses=["127.0.0.1", "192.0.2.10"], portals=["192.0.2.10"],
            own_names=frozenset({"localhost", "array.example"}),
        )
        client = await aiohttp_client(app)
        token = ""
        if login:
            response = await client.post(
                PREFIX + "/tokens",
                json={"username": USERNAME, "password": PASSWORD, "array_ip": ""},
            )
            assert response.status == 200, await response.text()
            token = (await response.json())["session_token"]
        return Api(client=client, lvm=lvm, lio=lio, dm=dm, store=store, token=token)

    yield make


@pytest.fixture
async def api(make_api: AppFactory) -> Api:
    return await make_api()
