"""Sync cursors: opaque to clients, tamper-evident, bound to one user, and short.

A cursor is either a position in the change log (`LogCursor`) or a place inside an initial
snapshot (`SnapshotCursor`: the log head the snapshot started from, the table it is in, the
last id sent). A catalogue snapshot's `position` (v1.1) is signed the same way but as a
kind of its own and bound to no user: it is in a document every phone shares, and neither
kind is accepted in place of the other. On the wire: base64url(version, kind, varints …,
8-byte HMAC) — about 16 characters for a log cursor, because every pull carries one.

The HMAC covers the payload and the user id, so a cursor edited by hand or taken from
another account fails verification; the server answers those with a reset snapshot, and a
string that is not a cursor at all with 400.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
from dataclasses import dataclass

from protocol.errors import MalformedCursor

VERSION = 1
MAC_BYTES = 8
_LOG, _SNAPSHOT, _POSITION = 1, 2, 3
# What a catalogue position's MAC is bound to in place of a user id (no user id is empty).
NO_USER = ""


@dataclass(frozen=True)
class LogCursor:
    position: int


@dataclass(frozen=True)
class SnapshotCursor:
    head: int
    table_index: int
    last_id: str


CursorState = LogCursor | SnapshotCursor


class ForeignCursor(Exception):
    """Well-formed, but not issued by us for this user (tampered, or another user's)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise MalformedCursor()
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7


class CursorCodec:
    def __init__(self, secret: bytes, cache_size: int = 20_000) -> None:
        # A key of its own, derived from the server secret, so cursors never sign anything else.
        self._key = hmac.new(secret, b"freshroots-cursor-v1", hashlib.sha256).digest()
        # An idle phone presents the same cursor on every background pull: remember what
        # verified (lru_cache never keeps a raised error), so the empty-pull fast path skips
        # base64, varints and HMAC. 20,000 entries are a few megabytes.
        self._verified = functools.lru_cache(maxsize=cache_size)(self._verify)
        # The same way out: the ~30 devices of an account reading one shared page get one
        # cursor, signed once.
        self._signed = functools.lru_cache(maxsize=cache_size)(self._sign)

    def _mac(self, payload: bytes, user_id: str) -> bytes:
        # hmac.digest is the one-shot C path: no HMAC objects per call, every pull verifies one.
        return hmac.digest(self._key, payload + b"\x00" + user_id.encode(), "sha256")[:MAC_BYTES]

    def encode(self, state: CursorState, user_id: str) -> str:
        return self._signed(state, user_id)

    def _sign(self, state: CursorState, user_id: str) -> str:
        if isinstance(state, LogCursor):
            payload = bytes([VERSION, _LOG]) + _varint(state.position)
        else:
            last_id = state.last_id.encode()
            payload = (
                bytes([VERSION, _SNAPSHOT])
                + _varint(state.head)
                + _varint(state.table_index)
                + _varint(len(last_id))
                + last_id
            )
        token = payload + self._mac(payload, user_id)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode()

    def encode_position(self, position: int) -> str:
        """A catalogue snapshot's position: where in the change log its document stands."""
        payload = bytes([VERSION, _POSITION]) + _varint(position)
        token = payload + self._mac(payload, NO_USER)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode()

    def decode_position(self, token: str) -> int:
        """Raises ForeignCursor for anything that is not a position we signed: the contract
        answers every bad position alike (a reset snapshot), malformed or tampered."""
        try:
            raw = _unbase64(token)
        except MalformedCursor:
            raise ForeignCursor() from None
        if len(raw) < 3 + MAC_BYTES or raw[0] != VERSION or raw[1] != _POSITION:
            raise ForeignCursor()
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        try:
            position, end = _read_varint(payload, 2)
        except MalformedCursor:
            raise ForeignCursor() from None
        if end != len(payload) or not hmac.compare_digest(mac, self._mac(payload, NO_USER)):
            raise ForeignCursor()
        return position

    def decode(self, token: str, user_id: str) -> CursorState:
        """Raises MalformedCursor (→ 400) or ForeignCursor (→ reset snapshot)."""
        return self._verified(token, user_id)

    def _verify(self, token: str, user_id: str) -> CursorState:
        raw = _unbase64(token)
        if len(raw) < 3 + MAC_BYTES or raw[0] != VERSION or raw[1] not in (_LOG, _SNAPSHOT):
            raise MalformedCursor()
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        state: CursorState
        if raw[1] == _LOG:
            position, end = _read_varint(payload, 2)
            state = LogCursor(position)
        else:
            head, offset = _read_varint(payload, 2)
            table_index, offset = _read_varint(payload, offset)
            length, offset = _read_varint(payload, offset)
            end = offset + length
            try:
                last_id = payload[offset:end].decode()
            except UnicodeDecodeError:
                raise MalformedCursor() from None
            state = SnapshotCursor(head, table_index, last_id)
        if end != len(payload):
            raise MalformedCursor()
        if not hmac.compare_digest(mac, self._mac(payload, user_id)):
            raise ForeignCursor()
        return state


def _unbase64(token: str) -> bytes:
    if not token or len(token) > 400:
        raise MalformedCursor()
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise MalformedCursor() from None
