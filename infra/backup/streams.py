"""Byte streams between a dump file and S3: zstd compression and optional authenticated encryption.

Encryption format (one object): MAGIC, an 8-byte random nonce prefix, then records of
``<4-byte big-endian length><AES-256-GCM ciphertext+tag>``. Record i is sealed with nonce = prefix || i
(4 bytes) and associated data b"last" on the final record, b"more" on the others. A reordered, altered or
truncated object therefore fails to decrypt; nothing unauthenticated is ever written out.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import IO

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"PSBE1"
RECORD_PLAINTEXT = 1024 * 1024
_LEN = struct.Struct(">I")


class IntegrityError(Exception):
    """A stored object does not match what was written (checksum, truncation, or tampering)."""


def encryption_key(secret: str) -> bytes:
    """The 256-bit key from the generated secret (URL-safe base64 of 32 random bytes)."""
    raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    if len(raw) != 32:
        raise ValueError("the backup encryption key must be 32 bytes")
    return raw


class EncryptingReader:
    """A readable stream of the encrypted form of ``source``."""

    def __init__(self, source: IO[bytes], key: bytes) -> None:
        self._source = source
        self._aead = AESGCM(key)
        self._prefix = os.urandom(8)
        self._counter = 0
        self._buffer = bytearray(MAGIC + self._prefix)
        self._pending = source.read(RECORD_PLAINTEXT)
        self._done = False

    def _seal_next(self) -> None:
        following = self._source.read(RECORD_PLAINTEXT)
        last = not following
        nonce = self._prefix + struct.pack(">I", self._counter)
        sealed = self._aead.encrypt(nonce, self._pending, b"last" if last else b"more")
        self._buffer += _LEN.pack(len(sealed)) + sealed
        self._counter += 1
        self._pending = following
        self._done = last

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            self._seal_next()
        if size < 0:
            size = len(self._buffer)
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        return chunk


def decrypt_stream(source: IO[bytes], sink: IO[bytes], key: bytes, name: str) -> None:
    def read_exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = source.read(n - len(data))
            if not chunk:
                raise IntegrityError(f"{name}: truncated encrypted object")
            data += chunk
        return data

    if read_exact(len(MAGIC)) != MAGIC:
        raise IntegrityError(f"{name}: not an encrypted backup object")
    aead, prefix, counter = AESGCM(key), read_exact(8), 0
    while True:
        length = _LEN.unpack(read_exact(4))[0]
        sealed = read_exact(length)
        nonce = prefix + struct.pack(">I", counter)
        for associated in (b"more", b"last"):
            try:
                sink.write(aead.decrypt(nonce, sealed, associated))
                break
            except InvalidTag:
                continue
        else:
            raise IntegrityError(f"{name}: authentication failed (tampered, reordered or wrong key)")
        counter += 1
        if associated == b"last":
            if source.read(1):
                raise IntegrityError(f"{name}: data after the final record")
            return


def compressing_reader(source: IO[bytes], level: int) -> IO[bytes]:
    # Multi-threaded zstd: compression runs beside pg_dump and the upload threads without holding the GIL.
    compressor = zstandard.ZstdCompressor(level=level, threads=-1)
    reader: IO[bytes] = compressor.stream_reader(source)
    return reader


def decompress_to(source: IO[bytes], sink: IO[bytes]) -> None:
    zstandard.ZstdDecompressor().copy_stream(source, sink)
