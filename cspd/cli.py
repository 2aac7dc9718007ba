"""The ``cspd`` command: serve the API, manage users, check the box."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from cspd import __version__
from cspd.config import DEFAULT_CONFIG_PATH, Config, load_config
from cspd.errors import ConfigError, CspError
from cspd.logs import setup_logging
from cspd.store import DB_NAME, Store

log = logging.getLogger("cspd")

MIN_PASSWORD_LENGTH = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cspd",
        description="Container Storage Provider for the HPE CSI Driver on LVM thin and LIO.",
    )
    parser.add_argument("--version", action="version", version=f"cspd {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"configuration file (default {DEFAULT_CONFIG_PATH}; built-in defaults when "
        "that file is absent)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", help="serve the CSP API until SIGTERM")
    commands.add_parser("doctor", help="check kernel modules, pool, portals, TLS and state")

    user = commands.add_parser("user", help="manage the users that may log in")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser(
        "add", help="add a user; the password is read from a prompt, or from stdin"
    )
    add.add_argument("name")
    passwd = user_commands.add_parser("passwd", help="set a user's password")
    passwd.add_argument("name")
    delete = user_commands.add_parser("delete", help="delete a user and revoke its tokens")
    delete.add_argument("name")
    user_commands.add_parser("list", help="list the users")
    return parser


def main(argv: list[str] | None = None) -> int:
    # The --config flag may also follow the subcommand, as in
    # "cspd serve --config FILE"; move it to the front for argparse.
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv[1:]:
        index = argv.index("--config")
        if index + 1 < len(argv):
            argv = ["--config", argv[index + 1], *argv[:index], *argv[index + 2:]]
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        setup_logging(config.log.level)
        if args.command == "serve":
            return serve(config)
        if args.command == "doctor":
            from cspd.doctor import run_doctor

            return run_doctor(config)
        return asyncio.run(user_command(config, args))
    except ConfigError as err:
        print(f"cspd: invalid configuration: {err}", file=sys.stderr)
        return 2
    except CspError as err:
        print(f"cspd: {err.message}", file=sys.stderr)
        return 1


# -- users ------------------------------------------------------------------------


def read_password(prompt: str = "Password: ") -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        second = getpass.getpass("Repeat password: ")
        if first != second:
            raise CspError("the passwords do not match")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise CspError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


async def user_command(config: Config, args: argparse.Namespace) -> int:
    from cspd.auth import hash_password

    store = Store(config.state_dir / DB_NAME)
    await store.open()
    try:
        if args.user_command == "list":
            for user in await store.list_users():
                print(user.name)
            return 0
        if args.user_command == "add":
            await store.add_user(args.name, hash_password(read_password()))
            print(f"user {args.name} added")
            return 0
        if args.user_command == "passwd":
            if not await store.set_password(args.name, hash_password(read_password())):
                raise CspError(f"user {args.name} not found")
            print(f"password of user {args.name} changed")
            return 0
        if not await store.delete_user(args.name):
            raise CspError(f"user {args.name} not found")
        print(f"user {args.name} deleted; its tokens are revoked")
        return 0
    finally:
        await store.close()


# -- serve --------------------------------------------------------------------------


def serve(config: Config) -> int:
    return asyncio.run(_serve(config))


async def _serve(config: Config) -> int:
    from cspd.api.app import make_app
    from cspd.command import CommandRunner
    from cspd.dm import DeviceMapper
    from cspd.lio import LioAdapter
    from cspd.lvm import LvmAdapter
    from cspd.netinfo import default_portals, local_addresses, own_names
    from cspd.sdnotify import notify
    from cspd.tls import certificate_paths, server_context

    runner = CommandRunner()
    addresses = await local_addresses(runner)
    portals = list(config.iscsi.portals) or default_portals(addresses)
    lvm = LvmAdapter(config.lvm, runner)
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lio = LioAdapter(config.iscsi, config.state_dir / "lio.json")
    dm = DeviceMapper(runner)
    app = make_app(
        config, lvm=lvm, lio=lio, dm=dm, addresses=addresses, portals=portals,
        own_names=own_names(addresses, config.api.array_names),
    )

    ssl_context = None
    scheme = "http"
    if not config.api.plain_http:
        cert, key = certificate_paths(config, addresses)
        ssl_context = server_context(cert, key)
        scheme = "https"

    app_runner = web.AppRunner(app, access_log=None, handle_signals=False)
    log.info("cspd %s starting", __version__, extra={"vg": config.lvm.volume_group,
                                                      "pool": config.lvm.thin_pool})
    await app_runner.setup()
    try:
        site = web.TCPSite(
            app_runner, config.api.listen, config.api.port, ssl_context=ssl_context
        )
        await site.start()
        log.info(
            "serving the CSP API on %s://%s:%d/csp",
            scheme, config.api.listen, config.api.port,
            extra={"portals": portals},
        )
        notify("READY=1")

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping on signal")
        notify("STOPPING=1")
    finally:
        await app_runner.cleanup()
    log.info("cspd stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
