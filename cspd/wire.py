"""Request and response bodies of the CSP API, as msgspec structs.

Requests ignore unknown fields, as the HPE CSI driver sends more than the
specification lists. Responses use the field names and JSON types the
driver's Go client decodes strictly: integers for sizes and times, booleans
for flags, and string-valued config maps.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from cspd.errors import BadRequest

T = TypeVar("T")


# -- requests ---------------------------------------------------------------


class TokenRequest(msgspec.Struct):
    username: str
    password: str
    array_ip: str = ""


class HostRequest(msgspec.Struct):
    uuid: str
    name: str = ""
    iqns: list[str] = msgspec.field(default_factory=list)
    networks: list[str] = msgspec.field(default_factory=list)
    wwpns: list[str] = msgspec.field(default_factory=list)
    nqns: list[str] = msgspec.field(default_factory=list)
    chap_user: str = ""
    chap_password: str = ""
    access_protocol: str = ""


class VolumeCreate(msgspec.Struct):
    name: str
    size: int | str
    description: str = ""
    base_snapshot_id: str = ""
    clone: bool = False
    volume_group_id: str = ""
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class VolumeEdit(msgspec.Struct):
    id: str = ""
    size: int | str | None = None
    description: str | None = None
    volume_group_id: str | None = None
    config: dict[str, Any] | None = None


class PublishRequest(msgspec.Struct):
    host_uuid: str
    access_protocol: str = "iscsi"


class UnpublishRequest(msgspec.Struct):
    host_uuid: str


class SnapshotCreate(msgspec.Struct):
    name: str
    volume_id: str
    description: str = ""
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class VolumeGroupCreate(msgspec.Struct):
    name: str
    description: str = ""
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class SnapshotGroupCreate(msgspec.Struct):
    name: str
    volume_group_id: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)


# -- responses ----------------------------------------------------------------


class Token(msgspec.Struct):
    id: str
    username: str
    array_ip: str
    creation_time: int
    expiry_time: int
    session_token: str


class Host(msgspec.Struct):
    id: str
    uuid: str
    name: str
    iqns: list[str]
    networks: list[str]
    wwpns: list[str]
    nqns: list[str]
    chap_user: str
    access_protocol: str


class Volume(msgspec.Struct):
    id: str
    name: str
    size: int
    description: str
    published: bool
    base_snapshot_id: str
    volume_group_id: str
    clone: bool
    config: dict[str, str]
    used_bytes: int
    free_bytes: int


class Snapshot(msgspec.Struct):
    id: str
    name: str
    size: int
    description: str
    volume_id: str
    volume_name: str
    creation_time: int
    ready_to_use: bool
    config: dict[str, Any]


class PublishInfo(msgspec.Struct):
    serial_number: str
    access_protocol: str
    target_names: list[str]
    discovery_ips: list[str]
    lun_id: int
    PeerArrayDetails: list[dict[str, Any]] = msgspec.field(default_factory=list)
    # Present only when the host has CHAP credentials.
    chap_user: str | msgspec.UnsetType = msgspec.UNSET
    chap_password: str | msgspec.UnsetType = msgspec.UNSET


class VolumeRef(msgspec.Struct):
    id: str
    name: str


class VolumeGroup(msgspec.Struct):
    id: str
    name: str
    description: str
    volumes: list[VolumeRef]
    creation_time: int
    config: dict[str, Any]


class SnapshotRef(msgspec.Struct):
    id: str
    name: str
    volume_id: str
    volume_name: str


class SnapshotGroup(msgspec.Struct):
    id: str
    name: str
    volume_group_id: str
    volume_group_name: str
    creation_time: int
    snapshots: list[SnapshotRef]
    config: dict[str, Any]


class ReplicationPartner(msgspec.Struct):
    id: str
    name: str
    partner_name: str
    repl_direction: str
    is_alive: bool


# -- decoding -------------------------------------------------------------------

_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def decode(body: bytes, kind: type[T]) -> T:
    """Decode a JSON request body; raises BadRequest naming the offending field."""
    if not body.strip():
        raise BadRequest("The request body is empty; a JSON object is required.")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as err:
        raise BadRequest(_describe(err)) from err
    except msgspec.DecodeError as err:
        raise BadRequest(f"The request body is not valid JSON: {err}") from err


def _describe(err: msgspec.ValidationError) -> str:
    text = str(err)
    missing = re.match(r"Object missing required field `(?P<field>[^`]+)`", text)
    match = _AT_PATH.search(text)
    where = match.group("path") if match else ""
    if missing:
        field = f"{where}.{missing.group('field')}" if where else missing.group("field")
        return f"Missing mandatory field '{field}'."
    if match:
        return f"Invalid value for field '{where}': {text[: match.start()]}."
    return f"Invalid request body: {text}."


def parse_size(value: int | str, field: str = "size") -> int:
    """Return a size in bytes from a JSON number or a numeric string; raises BadRequest."""
    if isinstance(value, str):
        if not re.fullmatch(r"\s*\d+\s*", value):
            raise BadRequest(
                f"Invalid value for field '{field}': {value!r} is not a number of bytes."
            )
        value = int(value)
    if value <= 0:
        raise BadRequest(f"Invalid value for field '{field}': {value} must be greater than zero.")
    return value


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)
