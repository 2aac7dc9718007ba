"""Tokens, authentication, array_ip and the error format."""

from __future__ import annotations

import sqlite3
import time

from cspd.auth import hash_token
from tests.api.conftest import PASSWORD, PREFIX, USERNAME, Api, AppFactory


async def test_login_returns_200_and_spec_fields(make_api: AppFactory) -> None:
    api = await make_api(login=False)
    response = await api.client.post(
        PREFIX + "/tokens", json={"username": USERNAME, "password": PASSWORD, "array_ip": ""}
    )
    assert response.status == 200
    body = await response.json()
    assert set(body) >= {"id", "username", "array_ip", "creation_time", "expiry_time",
                         "session_token"}
    assert body["username"] == USERNAME
    assert isinstance(body["creation_time"], int)
    assert body["expiry_time"] - body["creation_time"] == 1800


async def test_login_without_csp_prefix(make_api: AppFactory) -> None:
    api = await make_api(login=False)
    response = await api.client.post(
        "/containers/v1/tokens", json={"username": USERNAME, "password": PASSWORD}
    )
    assert response.status == 200


async def test_wrong_password_is_401_with_empty_body(make_api: AppFactory) -> None:
    api = await make_api(login=False)
    response = await api.client.post(
        PREFIX + "/tokens", json={"username": USERNAME, "password": "wrong password"}
    )
    assert response.status == 401
    assert await response.read() == b""


async def test_unknown_user_is_401(make_api: AppFactory) -> None:
    api = await make_api(login=False)
    response = await api.client.post(
        PREFIX + "/tokens", json={"username": "nobody", "password": PASSWORD}
    )
    assert response.status == 401


async def test_repeated_failures_slow_down(make_api: AppFactory) -> None:
    api = await make_api(login=False)
    durations = []
    for _ in range(4):
        started = time.monotonic()
        await api.client.post(PREFIX + "/tokens", json={"username": USERNAME, "password": "x"})
        durations.append(time.monotonic() - started)
    # The configured step is 0.05 s per earlier failure.
    assert durations[3] >= 0.15
    response = await api.client.post(
        PREFIX + "/tokens", json={"username": USERNAME, "password": PASSWORD}
    )
    assert response.status == 200


async def test_missing_token_is_401_empty(api: Api) -> None:
    response = await api.client.get(PREFIX + "/volumes")
    assert response.status == 401
    assert await response.read() == b""


async def test_unknown_token_is_401(api: Api) -> None:
    response = await api.client.get(PREFIX + "/volumes", headers={"x-auth-token": "f" * 32})
    assert response.status == 401
    assert await response.read() == b""


async def test_expired_token_is_401(api: Api) -> None:
    row = await api.store.get_token_by_hash(hash_token(api.token))
    assert row is not None
    await api.store._call(
        api.store._write,
        "UPDATE tokens SET expires = ? WHERE id = ?",
        (int(time.time()) - 1, row.id),
    )
    status, _ = await api.call("GET", "/volumes")
    assert status == 401


async def test_deleted_token_is_revoked(api: Api) -> None:
    row = await api.store.get_token_by_hash(hash_token(api.token))
    assert row is not None
    await api.call("DELETE", f"/tokens/{row.id}", expect=204)
    status, _ = await api.call("GET", "/volumes")
    assert status == 401


async def test_delete_unknown_token_is_404(api: Api) -> None:
    status, body = await api.call("DELETE", "/tokens/nope")
    assert status == 404
    assert body["errors"][0]["code"] == "Not Found"


async def test_token_survives_restart(make_api: AppFactory) -> None:
    first = await make_api()
    await first.client.close()
    second = await make_api(login=False)
    second.token = first.token
    status, _ = await second.call("GET", "/volumes")
    assert status == 200


async def test_token_stored_only_as_hash(api: Api) -> None:
    conn = sqlite3.connect(api.store.path)
    rows = conn.execute("SELECT * FROM tokens").fetchall()
    conn.close()
    flat = " ".join(str(value) for row in rows for value in row)
    assert rows
    assert api.token not in flat


async def test_array_ip_foreign_is_400(make_api: AppFactory) -> None:
    api = await make_api(login=False)
    response = await api.client.post(
        PREFIX + "/tokens",
        json={"username": USERNAME, "password": PASSWORD, "array_ip": "203.0.113.9"},
    )
    assert response.status == 400
    body = await response.json()
    assert "serves only" in body["errors"][0]["message"]


async def test_array_ip_own_name_accepted(api: Api) -> None:
    headers = {**api.headers(), "x-array-ip": "array.example"}
    status, _ = await api.call("GET", "/volumes", headers=headers)
    assert status == 200
    headers = {**api.headers(), "x-array-ip": "192.0.2.10"}
    status, _ = await api.call("GET", "/volumes", headers=headers)
    assert status == 200


async def test_x_array_ip_foreign_is_400(api: Api) -> None:
    headers = {**api.headers(), "x-array-ip": "198.51.100.1"}
    status, body = await api.call("GET", "/volumes", headers=headers)
    assert status == 400
    assert body["errors"][0]["code"] == "Bad Request"


async def test_invalid_json_is_400(api: Api) -> None:
    response = await api.client.post(
        PREFIX + "/volumes", data=b"{not json", headers=api.headers()
    )
    assert response.status == 400
    body = await response.json()
    assert "not valid JSON" in body["errors"][0]["message"]


async def test_wrong_type_names_field(api: Api) -> None:
    status, body = await api.call("POST", "/volumes", {"name": "v", "size": True})
    assert status == 400
    assert "'size'" in body["errors"][0]["message"]


async def test_missing_field_named(api: Api) -> None:
    status, body = await api.call("POST", "/volumes", {"size": 1024})
    assert status == 400
    assert "'name'" in body["errors"][0]["message"]


async def test_oversized_body_is_400(api: Api) -> None:
    body = {"name": "v", "size": 1, "description": "x" * (2 * 1024 * 1024)}
    status, data = await api.call("POST", "/volumes", body)
    assert status == 400
    assert "limit" in data["errors"][0]["message"]


async def test_unknown_route_is_404_in_spec_format(api: Api) -> None:
    status, body = await api.call("GET", "/nothing")
    assert status == 404
    assert body["errors"][0]["code"] == "Not Found"
