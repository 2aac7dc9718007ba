"""A small synchronous CSP client for lab tests, behaving like the HPE CSI driver.

Every request uses a new connection and the headers the driver sends, and a
401 leads to one new login and one repeat of the request, as in the driver.
The certificate is not verified, as in the driver's on-array mode.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit


class CspError(AssertionError):
    pass


class CspClient:
    def __init__(self, api_url: str, username: str, password: str) -> None:
        parts = urlsplit(api_url)
        assert parts.hostname in ("127.0.0.1", "::1", "localhost"), api_url
        self.host = parts.hostname
        self.port = parts.port or 443
        self.base = parts.path.rstrip("/") + "/containers/v1"
        self.username = username
        self.password = password
        self.token = ""
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE

    def _send(
        self, method: str, path: str, body: Any, headers: dict[str, str], timeout: float
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self._context, timeout=timeout
        )
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, self.base + path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        data = json.loads(raw) if raw else None
        return response.status, data

    def login(self) -> dict[str, Any]:
        status, data = self._send(
            "POST", "/tokens",
            {"username": self.username, "password": self.password, "array_ip": ""},
            {"Content-Type": "application/json", "Accept": "application/json"}, 60,
        )
        if status != 200:
            raise CspError(f"login failed with status {status}: {data}")
        self.token = data["session_token"]
        return data

    def call(
        self, method: str, path: str, body: Any = None, *, expect: int | None = None,
        timeout: float = 300, relogin: bool = True,
    ) -> tuple[int, Any]:
        """Send one request; with ``relogin``, a 401 logs in again and repeats it once."""
        if not self.token:
            self.login()
        for attempt in range(2):
            headers = {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "x-auth-token": self.token,
            }
            status, data = self._send(method, path, body, headers, timeout)
            if status == 401 and attempt == 0 and relogin:
                self.login()
                continue
            break
        if expect is not None and status != expect:
            raise CspError(f"{method} {path}: expected {expect}, got {status}: {data}")
        return status, data

    # Shorthands for the calls most tests make.

    def create_volume(self, name: str, size: int, **extra: Any) -> dict[str, Any]:
        return self.call("POST", "/volumes", {"name": name, "size": size, **extra}, expect=200)[1]

    def snapshot(self, volume_id: str, name: str) -> dict[str, Any]:
        body = {"name": name, "volume_id": volume_id, "description": ""}
        return self.call("POST", "/snapshots", body, expect=200)[1]

    def register_host(self, uuid: str, iqns: list[str], **extra: Any) -> dict[str, Any]:
        body = {"uuid": uuid, "name": uuid, "iqns": iqns, **extra}
        return self.call("POST", "/hosts", body, expect=200)[1]

    def publish(self, volume_id: str, host_uuid: str) -> dict[str, Any]:
        body = {"host_uuid": host_uuid, "access_protocol": "iscsi"}
        return self.call("PUT", f"/volumes/{volume_id}/actions/publish", body, expect=200)[1]

    def unpublish(self, volume_id: str, host_uuid: str) -> None:
        self.call(
            "PUT", f"/volumes/{volume_id}/actions/unpublish", {"host_uuid": host_uuid},
            expect=204,
        )
