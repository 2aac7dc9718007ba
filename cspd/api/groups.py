"""Handlers of the CSP endpoints for volume groups, snapshot groups and replication partners.

Like the other handlers, these decode the request into wire structs, call the
provider's group service and encode its result. Errors travel as cspd.errors
exceptions to the middleware.
"""

from __future__ import annotations

from aiohttp import web

from cspd import wire
from cspd.api.keys import PROVIDER
from cspd.api.routes import json_response

# -- volume groups ---------------------------------------------------------------------


async def list_volume_groups(request: web.Request) -> web.Response:
    groups = await request.app[PROVIDER].groups.list_volume_groups(request.query.get("name"))
    return json_response(groups)


async def get_volume_group(request: web.Request) -> web.Response:
    group = await request.app[PROVIDER].groups.get_volume_group(request.match_info["id"])
    return json_response(group)


async def create_volume_group(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.VolumeGroupCreate)
    return json_response(await request.app[PROVIDER].groups.create_volume_group(body))


async def delete_volume_group(request: web.Request) -> web.Response:
    await request.app[PROVIDER].groups.delete_volume_group(request.match_info["id"])
    return web.Response(status=204)


# -- snapshot groups ---------------------------------------------------------------------


async def list_snapshot_groups(request: web.Request) -> web.Response:
    groups = await request.app[PROVIDER].groups.list_snapshot_groups(
        request.query.get("volume_group_id"), name=request.query.get("name")
    )
    return json_response(groups)


async def get_snapshot_group(request: web.Request) -> web.Response:
    group = await request.app[PROVIDER].groups.get_snapshot_group(request.match_info["id"])
    return json_response(group)


async def create_snapshot_group(request: web.Request) -> web.Response:
    body = wire.decode(await request.read(), wire.SnapshotGroupCreate)
    return json_response(await request.app[PROVIDER].groups.create_snapshot_group(body))


async def delete_snapshot_group(request: web.Request) -> web.Response:
    # The specification shows a body (a list of ids) with the replication
    # partner form; the query names everything needed, so the body is unused.
    # An empty partner name is no partner.
    partner = request.query.get("replication_partner") or None
    await request.app[PROVIDER].groups.delete_snapshot_group(request.match_info["id"], partner)
    return web.Response(status=204)


# -- replication partners ------------------------------------------------------------------


async def list_replication_partners(request: web.Request) -> web.Response:
    partners = await request.app[PROVIDER].groups.list_replication_partners(
        request.query.get("name")
    )
    return json_response(partners)


def add_group_routes(router: web.UrlDispatcher, prefix: str) -> None:
    """Register the group and replication partner handlers under ``prefix``.

    Collections are served with and without a trailing slash, as in add_routes.
    """

    def collection(path: str) -> list[str]:
        return [f"{prefix}{path}", f"{prefix}{path}/"]

    for path in collection("/volume_groups"):
        router.add_get(path, list_volume_groups)
        router.add_post(path, create_volume_group)
    router.add_get(f"{prefix}/volume_groups/{{id}}", get_volume_group)
    router.add_delete(f"{prefix}/volume_groups/{{id}}", delete_volume_group)

    for path in collection("/snapshot_groups"):
        router.add_get(path, list_snapshot_groups)
        router.add_post(path, create_snapshot_group)
    router.add_get(f"{prefix}/snapshot_groups/{{id}}", get_snapshot_group)
    router.add_delete(f"{prefix}/snapshot_groups/{{id}}", delete_snapshot_group)

    for path in collection("/replication_partners"):
        router.add_get(path, list_replication_partners)
