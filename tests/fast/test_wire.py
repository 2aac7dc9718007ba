"""Request decoding: field-level errors and sizes."""

from __future__ import annotations

import pytest

from cspd import wire
from cspd.errors import BadRequest


def test_volume_create_accepts_unknown_fields() -> None:
    body = b'{"name":"v","size":5,"volume_group_id":"","extra":{"a":1}}'
    request = wire.decode(body, wire.VolumeCreate)
    assert request.name == "v"
    assert request.size == 5


def test_missing_field_is_named() -> None:
    with pytest.raises(BadRequest) as caught:
        wire.decode(b'{"size": 5}', wire.VolumeCreate)
    assert caught.value.message == "Missing mandatory field 'name'."


def test_wrong_type_is_named() -> None:
    with pytest.raises(BadRequest) as caught:
        wire.decode(b'{"host_uuid": 5}', wire.PublishRequest)
    assert "'host_uuid'" in caught.value.message


def test_nested_wrong_type_is_named() -> None:
    with pytest.raises(BadRequest) as caught:
        wire.decode(b'{"uuid":"u","iqns":[1]}', wire.HostRequest)
    assert "'iqns[0]'" in caught.value.message


def test_empty_body_is_rejected() -> None:
    with pytest.raises(BadRequest) as caught:
        wire.decode(b"  ", wire.UnpublishRequest)
    assert "empty" in caught.value.message


def test_not_an_object_is_rejected() -> None:
    with pytest.raises(BadRequest):
        wire.decode(b"[1,2]", wire.UnpublishRequest)


@pytest.mark.parametrize(("value", "expected"), [(5, 5), ("1073741824", 1 << 30), (" 7 ", 7)])
def test_parse_size_accepts(value: int | str, expected: int) -> None:
    assert wire.parse_size(value) == expected


@pytest.mark.parametrize("value", [0, -1, "", "1e9", "0x10", "-3", "12 GiB"])
def test_parse_size_rejects(value: int | str) -> None:
    with pytest.raises(BadRequest):
        wire.parse_size(value)


def test_publish_info_omits_chap_when_empty() -> None:
    info = wire.PublishInfo(
        serial_number="6001405abc", access_protocol="iscsi", target_names=["iqn.x:y"],
        discovery_ips=["192.0.2.1"], lun_id=0,
    )
    encoded = wire.encode(info)
    assert b"chap_user" not in encoded
    assert b'"lun_id":0' in encoded
