"""Per-user state outside any study: the data folder and the secret key that keys identifier hashes."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from core.common.errors import MemoScopeError

KEY_FILE = "identity.key"


def user_home() -> Path:
    """Where MemoScope keeps per-user data (``$MEMOSCOPE_HOME``, else ``~/.local/share/memoscope``)."""
    return Path(os.environ.get("MEMOSCOPE_HOME") or Path.home() / ".local" / "share" / "memoscope")


def identity_key() -> bytes:
    """This user's secret key for hashing identifiers read from headers (created on first use, mode 0600).

    A keyed hash (HMAC) rather than a plain one: patient IDs are short and guessable, so an unkeyed hash of one
    could be reversed by trying every ID. The key never leaves ``user_home()``; the same user gets the same
    pseudonym for the same patient in every study.
    """
    path = user_home() / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".identity-", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
            os.link(tmp, path)  # appears whole or not at all; another process's key, made first, wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    key = path.read_bytes()
    if len(key) < 16:
        raise MemoScopeError(f"{path}: the identity key is truncated ({len(key)} bytes); delete it to make a new one.")
    return key
