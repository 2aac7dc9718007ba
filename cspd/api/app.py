"""The aiohttp application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from cspd.api import groups, routes
from cspd.api.keys import AUTH, CONFIG, OWN_ADDRESSES, PROVIDER
from cspd.api.middleware import authenticate, log_requests, map_errors
from cspd.auth import Authenticator
from cspd.config import Config
from cspd.provider import Provider
from cspd.store import DB_NAME, Store

if TYPE_CHECKING:
    from cspd.dm import DeviceMapper
    from cspd.lio import LioAdapter
    from cspd.lvm import LvmAdapter

log = logging.getLogger("cspd.api")

PREFIXES = ("/containers/v1", "/csp/containers/v1")


def make_app(
    config: Config,
    *,
    lvm: LvmAdapter,
    lio: LioAdapter,
    dm: DeviceMapper,
    addresses: list[str],
    portals: list[str],
    own_names: frozenset[str],
    store: Store | None = None,
) -> web.Application:
    """Build the application; the store opens and the box is restored at start-up.

    ``addresses`` are the box's own addresses, ``portals`` the portal
    addresses used when the configuration lists none, and ``own_names`` the
    values that ``array_ip`` may carry.
    """
    app = web.Application(
        middlewares=[log_requests, map_errors, authenticate],
        client_max_size=config.api.max_body_bytes,
    )
    store = store or Store(config.state_dir / DB_NAME)
    provider = Provider(config, store, lvm, lio, dm, portals=portals)
    app[CONFIG] = config
    app[PROVIDER] = provider
    app[AUTH] = Authenticator(store, config.tokens.lifetime, config.tokens.failed_login_delay)
    app[OWN_ADDRESSES] = own_names | frozenset(a.lower() for a in addresses)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        try:
            report = await provider.start()
            log.info(
                "cspd is ready",
                extra={"problems": len(report.problems), "repairs": len(report.repairs)},
            )
            yield
        finally:
            await store.close()

    app.cleanup_ctx.append(lifecycle)

    for prefix in PREFIXES:
        routes.add_routes(app.router, prefix)
        groups.add_group_routes(app.router, prefix)
    return app
