"""Export block devices through LIO for lab tests, with rtslib-fb; runs inside the guest.

Usage (with the Python of /opt/cspd, which has rtslib-fb):

    lio.py export --name NAME --device DEV --target IQN --portal IP[:PORT] --acl IQN...
    lio.py remove --name NAME --target IQN
    lio.py show --target IQN

``export`` prints a JSON object with the storage object's unit serial and
the target name. Nothing here saves the configuration to disk, so the
daemon's saved configuration is left as it was.
"""

from __future__ import annotations

import argparse
import json
import sys

import rtslib_fb
from rtslib_fb import (
    LUN,
    TPG,
    BlockStorageObject,
    FabricModule,
    MappedLUN,
    NetworkPortal,
    NodeACL,
    RTSLibError,
    Target,
)

ISCSI_PORT = 3260


def parse_portal(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(":")
    if not address:
        return text, ISCSI_PORT
    return address, int(port)


def export(args: argparse.Namespace) -> dict[str, object]:
    """Create the backstore, target, portal, LUN and ACLs; on failure remove what was made."""
    try:
        storage = BlockStorageObject(args.name, dev=args.device)
        target = Target(FabricModule("iscsi"), wwn=args.target)
        tpg = TPG(target, 1)
        # Access is by ACL alone, without CHAP.
        tpg.set_attribute("authentication", "0")
        for portal in args.portal:
            address, port = parse_portal(portal)
            NetworkPortal(tpg, address, port)
        lun = LUN(tpg, 0, storage)
        for initiator in args.acl:
            MappedLUN(NodeACL(tpg, initiator), 0, lun)
        tpg.enable = True
    except (RTSLibError, OSError):
        remove(args)
        raise
    return {"serial": storage.wwn, "target": target.wwn}


def remove(args: argparse.Namespace) -> dict[str, object]:
    removed = []
    try:
        Target(FabricModule("iscsi"), wwn=args.target, mode="lookup").delete()
        removed.append(args.target)
    except RTSLibError:
        pass
    try:
        BlockStorageObject(args.name).delete()
        removed.append(args.name)
    except RTSLibError:
        pass
    return {"removed": removed}


def show(args: argparse.Namespace) -> dict[str, object]:
    root = rtslib_fb.RTSRoot()
    for target in root.targets:
        if target.wwn == args.target:
            tpgs = list(target.tpgs)
            portals = [portal for tpg in tpgs for portal in tpg.network_portals]
            return {
                "target": target.wwn,
                "portals": [f"{portal.ip_address}:{portal.port}" for portal in portals],
                "acls": [acl.node_wwn for tpg in tpgs for acl in tpg.node_acls],
            }
    return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export", help="export a block device as LUN 0")
    export_parser.add_argument("--name", required=True, help="backstore name")
    export_parser.add_argument("--device", required=True, help="block device path")
    export_parser.add_argument("--target", required=True, help="target IQN")
    export_parser.add_argument("--portal", action="append", required=True,
                               help="IP[:PORT] to listen on (repeatable)")
    export_parser.add_argument("--acl", action="append", default=[],
                               help="initiator IQN allowed to log in (repeatable)")
    remove_parser = commands.add_parser("remove", help="remove a target and its backstore")
    remove_parser.add_argument("--name", required=True)
    remove_parser.add_argument("--target", required=True)
    show_parser = commands.add_parser("show", help="print a target's portals and ACLs")
    show_parser.add_argument("--target", required=True)
    args = parser.parse_args()

    handlers = {"export": export, "remove": remove, "show": show}
    print(json.dumps(handlers[args.command](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
