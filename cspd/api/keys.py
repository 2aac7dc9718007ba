"""Typed keys under which the application stores its services."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from cspd.config import Config

if TYPE_CHECKING:
    from cspd.auth import Authenticator
    from cspd.provider import Provider

CONFIG = web.AppKey("config", Config)
PROVIDER: web.AppKey[Provider] = web.AppKey("provider")
AUTH: web.AppKey[Authenticator] = web.AppKey("auth")
# Names and addresses of this box, lower case, for the array_ip check.
OWN_ADDRESSES = web.AppKey("own_addresses", frozenset)
