"""Pseudonymisation: keyed hashes for identifiers and a keyed per-patient date shift."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from datetime import datetime, timedelta
from pathlib import Path

from theralake.lake import Lake

log = logging.getLogger(__name__)

KEY_ENV = "THERALAKE_PSEUDONYM_KEY"
KEY_FILE_ENV = "THERALAKE_KEY_FILE"
#: the shortest key accepted (characters): a short key lets anyone re-identify patients by
#: hashing candidate IDs
MIN_KEY_LENGTH = 16
#: ``theralake.json``'s record of the key a lake's pseudonyms were made with
FINGERPRINT_KEY = "pseudonym_key_fingerprint"
_MAX_SHIFT_DAYS = 3650


class PseudonymKeyError(ValueError):
    """No usable pseudonymisation key, or not the key the lake was made with."""


def default_key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV, Path.home() / ".theralake" / "pseudonym.key"))


class Pseudonymizer:
    """Maps identifiers to keyed hashes (HMAC-SHA256) so no identifier enters the lake.

    The key comes from ``$THERALAKE_PSEUDONYM_KEY``, else from a key file
    (``$THERALAKE_KEY_FILE`` or ``~/.theralake/pseudonym.key``), which is created only when
    ``create`` is set. The same key always gives the same pseudonyms; keep it secret and
    backed up.

    Raises:
        PseudonymKeyError: no key, or one shorter than ``MIN_KEY_LENGTH`` characters.
    """

    def __init__(self, key: bytes | str | None = None, key_file: Path | None = None, *,
                 create: bool = False):
        self.warnings: list[str] = []
        where = "the given key"
        if key is None and os.environ.get(KEY_ENV) is not None:
            key, where = os.environ[KEY_ENV], f"${KEY_ENV}"
        elif key is None:
            path = Path(key_file or default_key_file())
            key, where = self._key_from_file(path, create), str(path)
        raw = key.encode() if isinstance(key, str) else key
        if len(raw.strip()) < MIN_KEY_LENGTH:
            raise PseudonymKeyError(
                f"the pseudonymisation key ({where}) has {len(raw.strip())} characters; at least "
                f"{MIN_KEY_LENGTH} are needed (a short key lets anyone re-identify patients)")
        self._key = raw.strip()

    def _key_from_file(self, path: Path, create: bool) -> str:
        if path.exists():
            mode = path.stat().st_mode
            if mode & (stat.S_IRGRP | stat.S_IROTH):
                self.warnings.append(f"the pseudonymisation key {path} is readable by other "
                                     f"users (mode {stat.S_IMODE(mode):o}); chmod 600 it")
                log.warning("%s", self.warnings[-1])
            return path.read_text().strip()
        if not create:
            raise PseudonymKeyError(
                f"no pseudonymisation key: {path} does not exist and ${KEY_ENV} is not set; "
                "restore the key this lake's patients were pseudonymised with, or pass "
                "--new-key to create a new key for a new lake")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        self.warnings.append(f"created a new pseudonymisation key at {path}: keep it secret and "
                             "back it up; without it the same patients get new ids")
        log.warning("%s", self.warnings[-1])
        return key

    @property
    def fingerprint(self) -> str:
        """A keyed hash of a constant: tells keys apart and reveals nothing of the key."""
        return self._digest("key-fingerprint", "theralake")[:16]

    def token(self, purpose: str, value: str, length: int = 12) -> str:
        """A keyed pseudonym of any value (a folder name, a task key)."""
        return self._digest(purpose, value)[:length]

    def _digest(self, purpose: str, value: str) -> str:
        message = f"{purpose}:{value.strip()}".encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def patient_id(self, raw_id: str) -> str:
        """The lake's patient_id for a source PatientID."""
        if not str(raw_id).strip():
            raise ValueError("empty PatientID")
        return "P" + self._digest("patient", str(raw_id))[:15]

    def uid(self, raw_uid: str | None) -> str | None:
        """A keyed hash of a DICOM UID (series, frame of reference)."""
        return None if not raw_uid else self._digest("uid", str(raw_uid))[:32]

    def date_shift(self, raw_id: str) -> timedelta:
        """A secret per-patient shift applied to the one stored reference time."""
        days = int(self._digest("dateshift", str(raw_id))[:8], 16) % _MAX_SHIFT_DAYS
        return timedelta(days=days + 365)

    def shifted(self, raw_id: str, when: datetime) -> datetime:
        return when - self.date_shift(raw_id)

    def unshifted(self, raw_id: str, when: datetime) -> datetime:
        return when + self.date_shift(raw_id)


def lake_pseudonymizer(lake: Lake, new_key: bool = False) -> Pseudonymizer:
    """The pseudonymizer for ingesting into ``lake``: the user's key, checked against the
    fingerprint the lake records (recorded on the first ingest).

    ``new_key`` creates a missing key file, for a lake that has no key yet.

    Raises:
        PseudonymKeyError: no key; a key shorter than ``MIN_KEY_LENGTH``; or another key than
            the one the lake's patients were pseudonymised with (the same patients would get
            other ids).
    """
    recorded = lake.meta().get(FINGERPRINT_KEY)
    pseudo = Pseudonymizer(create=new_key and recorded is None)
    check_lake_key(lake, pseudo)
    return pseudo


def check_lake_key(lake: Lake, pseudo: Pseudonymizer) -> None:
    """Refuse ``pseudo`` for ``lake`` when the lake records another key's fingerprint; record
    its fingerprint in a lake that has none."""
    recorded = lake.meta().get(FINGERPRINT_KEY)
    if recorded is None:
        lake.set_meta(**{FINGERPRINT_KEY: pseudo.fingerprint})
    elif recorded != pseudo.fingerprint:
        raise PseudonymKeyError(
            f"{lake.path} was pseudonymised with another key (fingerprint {recorded}; this key's "
            f"is {pseudo.fingerprint}): its patients would get new ids. Use the lake's key "
            f"(${KEY_ENV} or ${KEY_FILE_ENV}), or ingest into a new lake")
