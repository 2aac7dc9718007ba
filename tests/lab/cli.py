"""``python3 -m tests.lab``: start, inspect and stop a lab guest running cspd."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from .errors import LabError
from .host import CACHE_ENV, REPO_ROOT, log
from .image import ensure_image
from .lab import Lab

DEFAULT_NAME = "default"


def stop_command(name: str) -> str:
    """Return the shell command that stops the lab called ``name``, runnable from any folder."""
    parts = [f"cd {shlex.quote(str(REPO_ROOT))} &&"]
    if os.environ.get(CACHE_ENV):
        parts.append(f"{CACHE_ENV}={shlex.quote(os.environ[CACHE_ENV])}")
    parts += ["python3", "-m", "tests.lab", "down"]
    if name != DEFAULT_NAME:
        parts += ["--name", shlex.quote(name)]
    return " ".join(parts)


def cmd_up(args: argparse.Namespace) -> int:
    try:
        lab = Lab.attach(args.name)
        log.info("lab %r is already running; reusing it", args.name)
    except LabError:
        try:
            lab = Lab.start(args.name, daemonize=True)
        except LabError as err:
            return _fail(args, f"the lab guest could not be started: {err}", None)

    try:
        username, password = lab.ensure_cspd()
    except LabError as err:
        return _fail(
            args,
            f"the guest is running but cspd did not start: {err}\n"
            f"Look around with: python3 -m tests.lab ssh{_name_flag(args.name)}",
            stop_command(args.name),
        )

    facts = lab.describe()
    stop = stop_command(args.name)
    print(f"cspd lab {args.name!r} is up ({lab.timings.summary()}, {lab.accel.upper()})")
    print(f"  API URL:   {facts['url']}  (self-signed certificate)")
    print(f"  username:  {username}")
    print(f"  password:  {password}")
    print(f"  iSCSI:     127.0.0.1:{lab.iscsi_port}  (the guest's port 3260)")
    print(f"  shell:     python3 -m tests.lab ssh{_name_flag(args.name)}")
    print(f"  stop:      {stop}")
    if args.json:
        print(json.dumps({
            "url": facts["url"],
            "username": username,
            "password": password,
            "iscsi_port": lab.iscsi_port,
            "stop": stop,
        }))
    return 0


def _name_flag(name: str) -> str:
    return "" if name == DEFAULT_NAME else f" --name {shlex.quote(name)}"


def _fail(args: argparse.Namespace, message: str, stop: str | None) -> int:
    print(f"error: {message}", file=sys.stderr)
    if stop:
        print(f"Stop the guest with: {stop}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message.splitlines()[0], "stop": stop}))
    return 1


def cmd_down(args: argparse.Namespace) -> int:
    try:
        lab = Lab.attach(args.name)
    except LabError:
        print(f"no lab named {args.name!r} is running")
        return 0
    lab.stop()
    print(f"lab {args.name!r} stopped ({lab.timings.shutdown:.1f} s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        lab = Lab.attach(args.name)
    except LabError:
        print(json.dumps({"running": False}) if args.json else f"lab {args.name!r}: not running")
        return 3
    facts = {"running": True, **lab.describe(), "stop": stop_command(args.name)}
    if args.json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            print(f"{key}: {value}")
    return 0


def cmd_ssh(args: argparse.Namespace) -> int:
    try:
        lab = Lab.attach(args.name)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    argv = lab.guest.ssh_argv()
    if args.command:
        # Like ssh itself: the words are joined with spaces for the guest's shell.
        argv += ["--", " ".join(args.command)]
    elif sys.stdin.isatty():
        argv.insert(1, "-t")
    os.execvp(argv[0], argv)


def cmd_build(args: argparse.Namespace) -> int:
    try:
        result = ensure_image()
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    state = "cached" if result.build_seconds is None else f"built in {result.build_seconds:.0f} s"
    print(f"image {result.image.digest}: {state} ({result.image.directory})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m tests.lab",
        description="Run cspd on the real kernel storage stack in a QEMU guest "
                    "(test and demo tooling; the cache is $CSPD_LAB_CACHE or ~/.cache/cspd-lab).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every host command")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="build and boot the guest, start cspd, print the URL "
                                        "and credentials; the guest keeps running")
    up.add_argument("--json", action="store_true",
                    help="end the output with one JSON line: url, username, password, "
                         "iscsi_port, stop")
    up.set_defaults(handler=cmd_up)

    down = commands.add_parser("down", help="power the guest off and delete its disks")
    down.set_defaults(handler=cmd_down)

    status = commands.add_parser("status", help="show whether the guest runs, and its ports")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=cmd_status)

    ssh = commands.add_parser("ssh", help="open a root shell in the guest, or run a command")
    ssh.add_argument("command", nargs=argparse.REMAINDER, help="command to run instead of a shell")
    ssh.set_defaults(handler=cmd_ssh)

    build = commands.add_parser("build", help="build the guest image into the cache only")
    build.set_defaults(handler=cmd_build)

    for sub in (up, down, status, ssh):
        sub.add_argument("--name", default=DEFAULT_NAME,
                         help=f"lab name, for several labs at once (default {DEFAULT_NAME})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="lab: %(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger().handlers[0].addFilter(lambda record: record.name == log.name)
    result: int = args.handler(args)
    return result
