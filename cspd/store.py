"""State store of the daemon: one SQLite database in the state folder.

The store keeps what LVM and LIO cannot: users, tokens, hosts, CSP names,
descriptions, configs, group membership, the unit serial of each volume and
which host may reach which LUN. LVM stays the source of truth for which
volumes and snapshots exist and how large they are.

All access goes through one worker thread that owns the connection, so the
database has exactly one writer and no call blocks the event loop. The
database runs in WAL mode with ``synchronous=FULL``, because a publish that
the client saw succeed must survive a power cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cspd.errors import Conflict, StateError

log = logging.getLogger("cspd.store")

T = TypeVar("T")

DB_NAME = "cspd.db"

# Each entry migrates the schema from version N to N + 1; append, never edit.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        username TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        array_ip TEXT NOT NULL,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE TABLE hosts (
        id TEXT PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        iqns TEXT NOT NULL,
        networks TEXT NOT NULL,
        wwpns TEXT NOT NULL,
        nqns TEXT NOT NULL,
        chap_user TEXT NOT NULL,
        chap_password TEXT NOT NULL,
        access_protocol TEXT NOT NULL,
        created INTEGER NOT NULL,
        updated INTEGER NOT NULL
    );
    CREATE TABLE volume_groups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL,
        config TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE volumes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        lv_name TEXT NOT NULL UNIQUE,
        requested_size INTEGER NOT NULL,
        description TEXT NOT NULL,
        config TEXT NOT NULL,
        base_snapshot_id TEXT NOT NULL,
        volume_group_id TEXT NOT NULL,
        unit_serial TEXT NOT NULL UNIQUE,
        target_scope TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE snapshot_groups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        volume_group_id TEXT NOT NULL,
        config TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        volume_id TEXT NOT NULL,
        name TEXT NOT NULL,
        lv_name TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        description TEXT NOT NULL,
        config TEXT NOT NULL,
        snapshot_group_id TEXT NOT NULL,
        created INTEGER NOT NULL,
        UNIQUE (volume_id, name)
    );
    CREATE TABLE targets (
        iqn TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        next_lun INTEGER NOT NULL
    );
    CREATE TABLE exports (
        volume_id TEXT PRIMARY KEY,
        target_iqn TEXT NOT NULL REFERENCES targets(iqn),
        lun_id INTEGER NOT NULL,
        UNIQUE (target_iqn, lun_id)
    );
    CREATE TABLE access (
        volume_id TEXT NOT NULL REFERENCES exports(volume_id),
        host_id TEXT NOT NULL REFERENCES hosts(id),
        iqns TEXT NOT NULL,
        PRIMARY KEY (volume_id, host_id)
    );
    """,
]


@dataclass(frozen=True)
class UserRow:
    name: str
    password_hash: str
    created: int


@dataclass(frozen=True)
class TokenRow:
    id: str
    token_hash: str
    username: str
    array_ip: str
    created: int
    expires: int


@dataclass(frozen=True)
class HostRow:
    id: str
    uuid: str
    name: str
    iqns: list[str]
    networks: list[str]
    wwpns: list[str]
    nqns: list[str]
    chap_user: str
    chap_password: str
    access_protocol: str
    created: int
    updated: int


@dataclass(frozen=True)
class VolumeRow:
    id: str
    name: str
    lv_name: str
    requested_size: int
    description: str
    config: dict[str, Any]
    base_snapshot_id: str
    volume_group_id: str
    unit_serial: str
    target_scope: str
    created: int


@dataclass(frozen=True)
class SnapshotRow:
    id: str
    volume_id: str
    name: str
    lv_name: str
    size: int
    description: str
    config: dict[str, Any]
    snapshot_group_id: str
    created: int


@dataclass(frozen=True)
class VolumeGroupRow:
    id: str
    name: str
    description: str
    config: dict[str, Any]
    created: int


@dataclass(frozen=True)
class SnapshotGroupRow:
    id: str
    name: str
    volume_group_id: str
    config: dict[str, Any]
    created: int


@dataclass(frozen=True)
class ExportRow:
    volume_id: str
    target_iqn: str
    lun_id: int


@dataclass(frozen=True)
class AccessRow:
    volume_id: str
    host_id: str
    iqns: list[str]


_JSON_COLUMNS = {"iqns", "networks", "wwpns", "nqns", "config"}


def _row_to(cls: type[T], row: sqlite3.Row) -> T:
    values = {k: (json.loads(row[k]) if k in _JSON_COLUMNS else row[k]) for k in row.keys()}  # noqa: SIM118 (iterating a Row yields values)
    return cls(**values)


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Store:
    """Async facade over the SQLite database; every call runs on one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cspd-store")
        self._conn: sqlite3.Connection | None = None

    # -- life cycle -------------------------------------------------------

    async def open(self) -> None:
        await self._call(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        new = not self.path.exists()
        conn = sqlite3.connect(self.path, isolation_level=None)
        if new:
            os.chmod(self.path, 0o600)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn
        self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StateError(
                f"state database {self.path} has schema version {version}, newer than this "
                f"cspd knows ({len(MIGRATIONS)}); upgrade cspd or restore a backup"
            )
        for target in range(version, len(MIGRATIONS)):
            log.info("migrating state database to schema version %d", target + 1)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError("state database is not open")
        return self._conn

    def _query(self, cls: type[T], sql: str, params: Iterable[Any] = ()) -> list[T]:
        return [_row_to(cls, row) for row in self._db.execute(sql, tuple(params))]

    def _one(self, cls: type[T], sql: str, params: Iterable[Any] = ()) -> T | None:
        rows = self._query(cls, sql, params)
        return rows[0] if rows else None

    def _write(self, sql: str, params: Iterable[Any] = ()) -> int:
        cursor = self._db.execute(sql, tuple(params))
        return cursor.rowcount

    def _transaction(self, fn: Callable[[], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = fn()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    # -- users and tokens ---------------------------------------------------

    async def add_user(self, name: str, password_hash: str) -> None:
        def add() -> None:
            try:
                self._write(
                    "INSERT INTO users (name, password_hash, created) VALUES (?, ?, ?)",
                    (name, password_hash, int(time.time())),
                )
            except sqlite3.IntegrityError as err:
                raise Conflict(f"user {name} already exists") from err

        await self._call(add)

    async def set_password(self, name: str, password_hash: str) -> bool:
        return bool(
            await self._call(
                self._write,
                "UPDATE users SET password_hash = ? WHERE name = ?",
                (password_hash, name),
            )
        )

    async def delete_user(self, name: str) -> bool:
        return bool(await self._call(self._write, "DELETE FROM users WHERE name = ?", (name,)))

    async def get_user(self, name: str) -> UserRow | None:
        return await self._call(self._one, UserRow, "SELECT * FROM users WHERE name = ?", (name,))

    async def list_users(self) -> list[UserRow]:
        return await self._call(self._query, UserRow, "SELECT * FROM users ORDER BY name")

    async def add_token(self, token: TokenRow) -> None:
        await self._call(
            self._write,
            "INSERT INTO tokens (id, token_hash, username, array_ip, created, expires) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (token.id, token.token_hash, token.username, token.array_ip, token.created,
             token.expires),
        )

    async def get_token_by_hash(self, token_hash: str) -> TokenRow | None:
        return await self._call(
            self._one, TokenRow, "SELECT * FROM tokens WHERE token_hash = ?", (token_hash,)
        )

    async def delete_token(self, token_id: str) -> bool:
        return bool(await self._call(self._write, "DELETE FROM tokens WHERE id = ?", (token_id,)))

    async def purge_expired_tokens(self, now: int) -> int:
        return await self._call(self._write, "DELETE FROM tokens WHERE expires <= ?", (now,))

    # -- hosts ----------------------------------------------------------------

    async def upsert_host(self, host: HostRow) -> HostRow:
        """Insert the host, or update the one with the same uuid; returns the stored row.

        One statement does both, so concurrent first registrations of one
        uuid leave exactly one record.
        """

        def upsert() -> HostRow:
            self._write(
                "INSERT INTO hosts (id, uuid, name, iqns, networks, wwpns, nqns, chap_user, "
                "chap_password, access_protocol, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (uuid) DO UPDATE SET name = excluded.name, iqns = excluded.iqns, "
                "networks = excluded.networks, wwpns = excluded.wwpns, nqns = excluded.nqns, "
                "chap_user = excluded.chap_user, chap_password = excluded.chap_password, "
                "access_protocol = excluded.access_protocol, updated = excluded.updated",
                (host.id, host.uuid, host.name, _dump(host.iqns), _dump(host.networks),
                 _dump(host.wwpns), _dump(host.nqns), host.chap_user, host.chap_password,
                 host.access_protocol, host.created, host.updated),
            )
            row = self._one(HostRow, "SELECT * FROM hosts WHERE uuid = ?", (host.uuid,))
            assert row is not None
            return row

        return await self._call(upsert)

    async def get_host(self, key: str) -> HostRow | None:
        """Return the host whose id or uuid is ``key``."""
        return await self._call(
            self._one, HostRow, "SELECT * FROM hosts WHERE id = ? OR uuid = ?", (key, key)
        )

    async def list_hosts(self) -> list[HostRow]:
        return await self._call(self._query, HostRow, "SELECT * FROM hosts ORDER BY name")

    async def delete_host(self, host_id: str) -> None:
        """Delete the host; raises Conflict while any volume is published to it."""

        def delete() -> None:
            def inner() -> None:
                published = self._db.execute(
                    "SELECT v.name FROM access a JOIN volumes v ON v.id = a.volume_id "
                    "WHERE a.host_id = ? ORDER BY v.name",
                    (host_id,),
                ).fetchall()
                if published:
                    names = ", ".join(row[0] for row in published)
                    raise Conflict(
                        f"Host {host_id} cannot be deleted while volumes are published to it: "
                        f"{names}"
                    )
                self._write("DELETE FROM hosts WHERE id = ?", (host_id,))

            self._transaction(inner)

        await self._call(delete)

    # -- volumes --------------------------------------------------------------

    async def add_volume(self, volume: VolumeRow) -> None:
        def add() -> None:
            try:
                self._write(
                    "INSERT INTO volumes (id, name, lv_name, requested_size, description, "
                    "config, base_snapshot_id, volume_group_id, unit_serial, target_scope, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (volume.id, volume.name, volume.lv_name, volume.requested_size,
                     volume.description, _dump(volume.config), volume.base_snapshot_id,
                     volume.volume_group_id, volume.unit_serial, volume.target_scope,
                     volume.created),
                )
            except sqlite3.IntegrityError as err:
                raise Conflict(f"Volume with name {volume.name} already exists") from err

        await self._call(add)

    async def get_volume(self, volume_id: str) -> VolumeRow | None:
        return await self._call(
            self._one, VolumeRow, "SELECT * FROM volumes WHERE id = ?", (volume_id,)
        )

    async def get_volume_by_name(self, name: str) -> VolumeRow | None:
        return await self._call(
            self._one, VolumeRow, "SELECT * FROM volumes WHERE name = ?", (name,)
        )

    async def list_volumes(self) -> list[VolumeRow]:
        return await self._call(
            self._query, VolumeRow, "SELECT * FROM volumes ORDER BY created, name"
        )

    async def list_volumes_in_group(self, group_id: str) -> list[VolumeRow]:
        return await self._call(
            self._query,
            VolumeRow,
            "SELECT * FROM volumes WHERE volume_group_id = ? ORDER BY created, name",
            (group_id,),
        )

    async def update_volume(self, volume_id: str, **fields: Any) -> None:
        allowed = {"requested_size", "description", "config", "volume_group_id", "target_scope"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update volume columns {sorted(unknown)}")
        if not fields:
            return
        columns = ", ".join(f"{name} = ?" for name in fields)
        values = [_dump(v) if k == "config" else v for k, v in fields.items()]
        await self._call(
            self._write, f"UPDATE volumes SET {columns} WHERE id = ?", (*values, volume_id)
        )

    async def delete_volume(self, volume_id: str) -> None:
        await self._call(self._write, "DELETE FROM volumes WHERE id = ?", (volume_id,))

    # -- snapshots ------------------------------------------------------------

    async def add_snapshot(self, snapshot: SnapshotRow) -> None:
        def add() -> None:
            try:
                self._write(
                    "INSERT INTO snapshots (id, volume_id, name, lv_name, size, description, "
                    "config, snapshot_group_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (snapshot.id, snapshot.volume_id, snapshot.name, snapshot.lv_name,
                     snapshot.size, snapshot.description, _dump(snapshot.config),
                     snapshot.snapshot_group_id, snapshot.created),
                )
            except sqlite3.IntegrityError as err:
                raise Conflict(
                    f"Snapshot with name {snapshot.name} already exists for the volume"
                ) from err

        await self._call(add)

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRow | None:
        return await self._call(
            self._one, SnapshotRow, "SELECT * FROM snapshots WHERE id = ?", (snapshot_id,)
        )

    async def list_snapshots(
        self, *, volume_id: str | None = None, name: str | None = None,
        snapshot_group_id: str | None = None,
    ) -> list[SnapshotRow]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("volume_id", volume_id), ("name", name), ("snapshot_group_id", snapshot_group_id)
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._call(
            self._query, SnapshotRow,
            f"SELECT * FROM snapshots{where} ORDER BY created, name", params,
        )

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._call(self._write, "DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    # -- volume groups and snapshot groups -------------------------------------

    async def add_volume_group(self, group: VolumeGroupRow) -> None:
        def add() -> None:
            try:
                self._write(
                    "INSERT INTO volume_groups (id, name, description, config, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (group.id, group.name, group.description, _dump(group.config),
                     group.created),
                )
            except sqlite3.IntegrityError as err:
                raise Conflict(f"Volume group with name {group.name} already exists") from err

        await self._call(add)

    async def get_volume_group(self, group_id: str) -> VolumeGroupRow | None:
        return await self._call(
            self._one, VolumeGroupRow, "SELECT * FROM volume_groups WHERE id = ?", (group_id,)
        )

    async def get_volume_group_by_name(self, name: str) -> VolumeGroupRow | None:
        return await self._call(
            self._one, VolumeGroupRow, "SELECT * FROM volume_groups WHERE name = ?", (name,)
        )

    async def list_volume_groups(self) -> list[VolumeGroupRow]:
        return await self._call(
            self._query, VolumeGroupRow, "SELECT * FROM volume_groups ORDER BY created, name"
        )

    async def delete_volume_group(self, group_id: str) -> None:
        """Delete the group; raises Conflict naming the volumes that are still members."""

        def delete() -> None:
            def inner() -> None:
                members = self._db.execute(
                    "SELECT name FROM volumes WHERE volume_group_id = ? ORDER BY name",
                    (group_id,),
                ).fetchall()
                if members:
                    names = ", ".join(row[0] for row in members)
                    raise Conflict(f"Volume group {group_id} still has volumes: {names}")
                self._write("DELETE FROM volume_groups WHERE id = ?", (group_id,))

            self._transaction(inner)

        await self._call(delete)

    async def add_snapshot_group(self, group: SnapshotGroupRow) -> None:
        await self._call(
            self._write,
            "INSERT INTO snapshot_groups (id, name, volume_group_id, config, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (group.id, group.name, group.volume_group_id, _dump(group.config), group.created),
        )

    async def get_snapshot_group(self, group_id: str) -> SnapshotGroupRow | None:
        return await self._call(
            self._one, SnapshotGroupRow, "SELECT * FROM snapshot_groups WHERE id = ?", (group_id,)
        )

    async def list_snapshot_groups(
        self, volume_group_id: str, name: str | None = None
    ) -> list[SnapshotGroupRow]:
        sql = "SELECT * FROM snapshot_groups WHERE volume_group_id = ?"
        params: list[Any] = [volume_group_id]
        if name is not None:
            sql += " AND name = ?"
            params.append(name)
        return await self._call(self._query, SnapshotGroupRow, sql + " ORDER BY created", params)

    async def delete_snapshot_group(self, group_id: str) -> None:
        await self._call(self._write, "DELETE FROM snapshot_groups WHERE id = ?", (group_id,))

    # -- exports and access -------------------------------------------------------

    async def get_export(self, volume_id: str) -> ExportRow | None:
        return await self._call(
            self._one, ExportRow, "SELECT * FROM exports WHERE volume_id = ?", (volume_id,)
        )

    async def list_exports(self) -> list[ExportRow]:
        return await self._call(self._query, ExportRow, "SELECT * FROM exports")

    async def add_export(self, volume_id: str, target_iqn: str, scope: str) -> ExportRow:
        """Record the volume's LUN on ``target_iqn``, allocating its LUN id.

        Volume-scope targets carry one LUN, id 0. On a shared (group-scope)
        target the ids only grow, so an id that another volume held is not
        handed out again while a host may still hold a stale device for it.
        """

        def add() -> ExportRow:
            def inner() -> ExportRow:
                self._write(
                    "INSERT INTO targets (iqn, scope, next_lun) VALUES (?, ?, 0) "
                    "ON CONFLICT (iqn) DO NOTHING",
                    (target_iqn, scope),
                )
                next_lun = self._db.execute(
                    "SELECT next_lun FROM targets WHERE iqn = ?", (target_iqn,)
                ).fetchone()[0]
                lun_id = next_lun if scope == "group" else 0
                if lun_id > MAX_LUN_ID:
                    lun_id = self._lowest_free_lun(target_iqn)
                self._write(
                    "INSERT INTO exports (volume_id, target_iqn, lun_id) VALUES (?, ?, ?)",
                    (volume_id, target_iqn, lun_id),
                )
                self._write(
                    "UPDATE targets SET next_lun = ? WHERE iqn = ?",
                    (max(next_lun, lun_id + 1), target_iqn),
                )
                return ExportRow(volume_id, target_iqn, lun_id)

            return self._transaction(inner)

        return await self._call(add)

    def _lowest_free_lun(self, target_iqn: str) -> int:
        # TODO: after MAX_LUN_ID allocations on one shared target, ids are reused
        # lowest-first, and a host that kept a stale device for a reused id reaches
        # another volume behind it until it rescans.
        used = {
            row[0]
            for row in self._db.execute(
                "SELECT lun_id FROM exports WHERE target_iqn = ?", (target_iqn,)
            )
        }
        for lun_id in range(MAX_LUN_ID + 1):
            if lun_id not in used:
                return lun_id
        raise Conflict(f"target {target_iqn} has no free LUN id left")

    async def delete_export(self, volume_id: str) -> None:
        def delete() -> None:
            def inner() -> None:
                row = self._db.execute(
                    "SELECT target_iqn FROM exports WHERE volume_id = ?", (volume_id,)
                ).fetchone()
                self._write("DELETE FROM access WHERE volume_id = ?", (volume_id,))
                self._write("DELETE FROM exports WHERE volume_id = ?", (volume_id,))
                if row is not None:
                    # A volume-scope target dies with its only LUN.
                    self._write(
                        "DELETE FROM targets WHERE iqn = ? AND scope = 'volume'", (row[0],)
                    )

            self._transaction(inner)

        await self._call(delete)

    async def count_exports_on_target(self, target_iqn: str) -> int:
        def count() -> int:
            row = self._db.execute(
                "SELECT COUNT(*) FROM exports WHERE target_iqn = ?", (target_iqn,)
            ).fetchone()
            return int(row[0])

        return await self._call(count)

    async def set_access(self, volume_id: str, host_id: str, iqns: list[str]) -> None:
        await self._call(
            self._write,
            "INSERT INTO access (volume_id, host_id, iqns) VALUES (?, ?, ?) "
            "ON CONFLICT (volume_id, host_id) DO UPDATE SET iqns = excluded.iqns",
            (volume_id, host_id, _dump(iqns)),
        )

    async def get_access(self, volume_id: str, host_id: str) -> AccessRow | None:
        return await self._call(
            self._one, AccessRow,
            "SELECT * FROM access WHERE volume_id = ? AND host_id = ?", (volume_id, host_id),
        )

    async def list_access(self, volume_id: str | None = None) -> list[AccessRow]:
        if volume_id is None:
            return await self._call(self._query, AccessRow, "SELECT * FROM access")
        return await self._call(
            self._query, AccessRow, "SELECT * FROM access WHERE volume_id = ?", (volume_id,)
        )

    async def published_volume_ids(self) -> set[str]:
        def ids() -> set[str]:
            return {row[0] for row in self._db.execute("SELECT DISTINCT volume_id FROM access")}

        return await self._call(ids)

    async def delete_access(self, volume_id: str, host_id: str) -> None:
        await self._call(
            self._write, "DELETE FROM access WHERE volume_id = ? AND host_id = ?",
            (volume_id, host_id),
        )


# Highest LUN id cspd hands out on a shared target. LIO accepts up to 65535
# (TRANSPORT_MAX_LUNS_PER_TPG in recent kernels is 65536), and Linux initiators
# scan up to max_luns=512 by default, so stay well inside both.
MAX_LUN_ID = 511
