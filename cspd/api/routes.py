"""Handlers of the CSP endpoints for tokens, hosts, volumes and snapshots.

Handlers decode the request into wire structs, call the provider and encode
its result. Errors travel as cspd.errors exceptions to the middleware.
"""

from __future__ import annotations

from aiohttp import web

from cspd import wire
from cspd.api.keys import AUTH, OWN_ADDRESSES, PROVIDER
from cspd.api.middleware import check_array_ip
from cspd.errors import BadRequest, NotFound


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=wire.encode(value), content_type="application/json")



# -- tokens ---------------------------------------------------------------------


async def create_token(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.TokenRequest)
    check_array_ip(body.array_ip, request.app[OWN_ADDRESSES])
    issued = await request.app[AUTH].login(
        body.username, body.password, body.array_ip, request.remote or ""
    )
    row = issued.row
    token = wire.Token(
        id=row.id,
        username=row.username,
        array_ip=row.array_ip,
        creation_time=row.created,
        expiry_time=row.expires,
        session_token=issued.session_token,
    )
    # The driver accepts only 200 here; a 201 breaks its login.
    return json_response(token, status=200)


async def delete_token(request: web.Request) -> web.Response:
    if not await request.app[AUTH].store.delete_token(request.match_info["id"]):
        raise NotFound(f"Token with id {request.match_info['id']} not found.")
    return web.Response(status=204)


# -- hosts ------------------------------------------------------------------------


async def register_host(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.HostRequest)
    return json_response(await request.app[PROVIDER].exports.register_host(body))


async def delete_host(request: web.Request) -> web.Response:
    await request.app[PROVIDER].exports.delete_host(request.match_info["id"])
    return web.Response(status=204)


# -- volumes ------------------------------------------------------------------------


async def list_volumes(request: web.Request) -> web.Response:
    name = request.query.get("name")
    return json_response(await request.app[PROVIDER].volumes.list_volumes(name=name))


async def get_volume(request: web.Request) -> web.Response:
    return json_response(await request.app[PROVIDER].volumes.get_volume(request.match_info["id"]))


async def create_volume(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.VolumeCreate)
    return json_response(await request.app[PROVIDER].volumes.create_volume(body))


async def edit_volume(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.VolumeEdit)
    volume = await request.app[PROVIDER].edit_volume(request.match_info["id"], body)
    return json_response(volume)


async def delete_volume(request: web.Request) -> web.Response:
    force = (request.query.get("force") or "false").lower()
    if force not in ("true", "false"):
        raise BadRequest(f"Invalid value for query 'force': {force!r}; expected true or false.")
    await request.app[PROVIDER].volumes.delete_volume(request.match_info["id"])
    return web.Response(status=204)


async def publish_volume(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.PublishRequest)
    info = await request.app[PROVIDER].exports.publish(request.match_info["id"], body)
    return json_response(info)


async def unpublish_volume(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.UnpublishRequest)
    await request.app[PROVIDER].exports.unpublish(request.match_info["id"], body)
    return web.Response(status=204)


# -- snapshots ------------------------------------------------------------------------


async def list_snapshots(request: web.Request) -> web.Response:
    volume_id = request.query.get("volume_id")
    name = request.query.get("name")
    snapshots = await request.app[PROVIDER].volumes.list_snapshots(volume_id=volume_id, name=name)
    return json_response(snapshots)


async def get_snapshot(request: web.Request) -> web.Response:
    snapshot = await request.app[PROVIDER].volumes.get_snapshot(request.match_info["id"])
    return json_response(snapshot)


async def create_snapshot(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.SnapshotCreate)
    return json_response(await request.app[PROVIDER].volumes.create_snapshot(body))


async def delete_snapshot(request: web.Request) -> web.Response:
    await request.app[PROVIDER].volumes.delete_snapshot(request.match_info["id"])
    return web.Response(status=204)


def add_routes(router: web.UrlDispatcher, prefix: str) -> None:
    """Register the handlers under ``prefix``.

    Collections are served with and without a trailing slash, because the
    specification shows both.
    """

    def collection(path: str) -> list[str]:
        return [f"{prefix}{path}", f"{prefix}{path}/"]

    for path in collection("/tokens"):
        router.add_post(path, create_token)
    router.add_delete(f"{prefix}/tokens/{{id}}", delete_token)

    for path in collection("/hosts"):
        router.add_post(path, register_host)
    router.add_delete(f"{prefix}/hosts/{{id}}", delete_host)

    for path in collection("/volumes"):
        router.add_get(path, list_volumes)
        router.add_post(path, create_volume)
    router.add_get(f"{prefix}/volumes/{{id}}", get_volume)
    router.add_put(f"{prefix}/volumes/{{id}}", edit_volume)
    router.add_delete(f"{prefix}/volumes/{{id}}", delete_volume)
    router.add_put(f"{prefix}/volumes/{{id}}/actions/publish", publish_volume)
    router.add_put(f"{prefix}/volumes/{{id}}/actions/unpublish", unpublish_volume)

    for path in collection("/snapshots"):
        router.add_get(path, list_snapshots)
        router.add_post(path, create_snapshot)
    router.add_get(f"{prefix}/snapshots/{{id}}", get_snapshot)
    router.add_delete(f"{prefix}/snapshots/{{id}}", delete_snapshot)
