"""Encryption at rest for everything S1 writes while it still holds raw prompts (PII).

The key is a Fernet key (``cryptography``: AES-128-CBC + HMAC-SHA256, authenticated), taken from

1. the environment variable ``LLM2SLM_STORE_KEY``, else
2. the key file named by ``LLM2SLM_STORE_KEY_FILE`` (default ``~/.config/llm2slm/store.key``), created on first use
   with mode 0600 in a 0700 folder (a key file its group or others may access is refused). It lives outside the work directory so that copying, versioning (DVC) or
   archiving a run never carries the key along with the data it protects.

Two encrypted forms are written:

* :class:`EncryptedAppendLog`: an append-only log, one Fernet token per line (the proxy store). Durability policy:
  each record is one ``write`` of a whole line to a file opened ``O_APPEND`` followed by ``fsync`` before the
  record counts as accepted, so a crash or restart never loses an accepted record and never leaves half of one
  (a torn last line, should the disk fail mid-write, is quarantined by the reader, the lines before stay readable).
* :func:`write_encrypted` / :func:`read_maybe_encrypted`: a whole file (e.g. S1's records Parquet) as one Fernet
  token. Readers recognise the form by its first bytes, so plain files keep working.

A wrong key is :class:`StoreKeyError` with one message saying what to check; the CLI prints it without a
traceback.
"""

from __future__ import annotations

import base64
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_ENV = "LLM2SLM_STORE_KEY"
KEY_FILE_ENV = "LLM2SLM_STORE_KEY_FILE"
DEFAULT_KEY_FILE = Path("~/.config/llm2slm/store.key")
FILE_MODE = 0o600
DIR_MODE = 0o700
# Every Fernet token starts with version byte 0x80, which base64url-encodes to "gA" (the timestamp that follows
# makes the next characters "AAAAA" for any date before 2106).
FERNET_PREFIX = b"gAAAAA"


class StoreKeyError(RuntimeError):
    """The store key is missing, malformed or not the one the data was encrypted with."""


class KeyFilePermissionError(PermissionError):
    """A secret key file that users other than its owner may access: refused, not read."""


def read_private_key_file(path: Path, what: str) -> bytes:
    """A key file's bytes, stripped; refused when its group or others have any access to it: whoever can read the
    key can read everything it protects. The one rule for every key file llm2slm reads (the store key, S2's
    pseudonym key)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFilePermissionError(
            f"{what} {path} is accessible by group or others (mode {mode:04o}); chmod 600 {path}"
        )
    return path.read_bytes().strip()


def key_file_path() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE).expanduser()


def _validated(key: bytes, origin: str) -> bytes:
    try:
        if len(base64.urlsafe_b64decode(key)) != 32:
            raise ValueError
    except ValueError:
        raise StoreKeyError(
            f"the store key from {origin} is not a Fernet key (32 url-safe base64-encoded bytes); "
            "generate one with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`"
        ) from None
    return key


def load_key(create: bool = True) -> bytes:
    """The store key: ``$LLM2SLM_STORE_KEY``, else the key file (created 0600 on first use when ``create``)."""
    from_env = os.environ.get(KEY_ENV, "").strip()
    if from_env:
        return _validated(from_env.encode(), f"${KEY_ENV}")
    path = key_file_path()
    if path.exists():
        return _validated(read_private_key_file(path, "store key file"), str(path))
    if not create:
        raise StoreKeyError(f"no store key: set ${KEY_ENV} or provide the key file {path} (${KEY_FILE_ENV})")
    path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    key = Fernet.generate_key()
    try:
        # O_EXCL: two processes starting at once must not each write a different key.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return _validated(read_private_key_file(path, "store key file"), str(path))
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key + b"\n")
    return key


@lru_cache(maxsize=8)
def _fernet_for(key: bytes) -> Fernet:
    return Fernet(key)


def fernet(key: bytes | None = None) -> Fernet:
    return _fernet_for(key or load_key())


def is_encrypted(head: bytes) -> bool:
    return head.lstrip()[: len(FERNET_PREFIX)] == FERNET_PREFIX


def decrypt(token: bytes, what: str, key: bytes | None = None) -> bytes:
    try:
        return fernet(key).decrypt(token.strip())
    except InvalidToken:
        raise StoreKeyError(
            f"cannot decrypt {what}: wrong store key (check ${KEY_ENV} / {key_file_path()}) or the data was altered"
        ) from None


def write_encrypted(data: bytes, path: Path, key: bytes | None = None) -> Path:
    """Write ``data`` as one Fernet token, 0600, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = fernet(key).encrypt(data)
    partial = path.with_name(f".{path.name}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(token)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def read_maybe_encrypted(path: Path, key: bytes | None = None) -> bytes:
    """The file's bytes, decrypted when it is in the Fernet form, as they are otherwise."""
    data = path.read_bytes()
    return decrypt(data, str(path), key) if is_encrypted(data[:16]) else data


class EncryptedAppendLog:
    """Append-only log of encrypted lines, one file per name; safe to share between threads of one process.

    Several processes may append to one file too: each line is a single ``O_APPEND`` write, which POSIX keeps
    whole and unmixed on a local file system.
    """

    def __init__(self, directory: Path, key: bytes | None = None, fsync: bool = True) -> None:
        self.directory = Path(directory)
        # Resolved once: reading the key file on every append was a quarter of the proxy's CPU per call.
        self._box = fernet(key)
        self._fsync = fsync
        self._lock = threading.Lock()

    def append(self, name: str, payload: bytes) -> Path:
        line = self._box.encrypt(payload) + b"\n"
        path = self.directory / name
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            # The mode argument is ignored for an existing file and masked by the umask: enforce it.
            os.fchmod(descriptor, FILE_MODE)
            os.write(descriptor, line)
            if self._fsync:
                # Outside the lock: concurrent writers' fsyncs overlap (the file system commits them together)
                # instead of queueing one disk flush after another.
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return path


def _wrong_key(what: str, undecryptable: int) -> StoreKeyError:
    return StoreKeyError(
        f"cannot decrypt {what}: none of its {undecryptable} lines opens with this key: wrong store key "
        f"(check ${KEY_ENV} / {key_file_path()})"
    )


def check_key_opens(lines: Iterable[bytes], what: str, key: bytes | None = None) -> None:
    """Raise StoreKeyError unless the key opens these lines of an :class:`EncryptedAppendLog`. The key is right
    as soon as one line decrypts: a line that does not is torn or altered, and its reader quarantines it. Only
    when no line at all decrypts is the key wrong (one clear error rather than a quarantine entry per line)."""
    box = fernet(key)
    undecryptable = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            box.decrypt(line.strip())
            return
        except InvalidToken:
            undecryptable += 1
    if undecryptable:
        raise _wrong_key(what, undecryptable)


def decrypt_lines(lines: Iterator[bytes], what: str, key: bytes | None = None) -> Iterator[bytes | None]:
    """Decrypt the lines of an :class:`EncryptedAppendLog`; a line that is not a valid token yields ``None``
    (the caller quarantines it) unless no line at all decrypts, which means a wrong key: one clear error, the
    same rule as :func:`check_key_opens`."""
    box = fernet(key)
    decrypted_any = failed = 0
    for line in lines:
        if not line.strip():
            yield b""
            continue
        try:
            plain = box.decrypt(line.strip())
        except InvalidToken:
            failed += 1
            yield None
            continue
        decrypted_any += 1
        yield plain
    if failed and not decrypted_any:
        raise _wrong_key(what, failed)
