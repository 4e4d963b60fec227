"""Who corral's children run as: `[corral] user`/`group` (`--user`, `--group`), and `[web]`'s.

Lookups only, no change of identity (that is `corral.posix.assume_identity`,
and the launcher's): the settings check with it that an identity can be
taken on here before anything starts (`corral.settings.resolve`), the
manager computes with it the ids its children get. Imports nothing of
corral's but its error type.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Any

from corral.errors import UsageError


class IdentityError(UsageError):
    """A user or group that does not exist, or that corral cannot run its children as.

    `setting` is the one at fault ("user" or "group"), `reason` what is wrong
    with it; the message is both, with the value: "user 'app': no such user".
    """

    def __init__(self, setting: str, value: str, reason: str) -> None:
        super().__init__(f"{setting} {value!r}: {reason}")
        self.setting = setting
        self.value = value
        self.reason = reason


def identity(user: str | None, group: str | None) -> dict[str, Any]:
    """The `user`, `group` and `extra_groups` ids for running a child as `user`/`group`,
    and the `environment` that says who it is (HOME, USER, LOGNAME, as su and systemd set).

    The manager keeps its own identity (so it can remove its pidfile and
    socket files, and bind again on reload); the children, which run the
    user's code, are started as the user. Names or numeric ids.

    Not being root, corral can only keep its own identity: when it already
    runs as `user` and `group` (a systemd unit's `User=`, a container's
    user), nothing needs changing and {} is returned; a numeric id then
    needs no entry in /etc/passwd (a container's arbitrary uid). Otherwise
    IdentityError names one that does not exist, or one only root could become.
    """
    if user is None and group is None:
        return {}
    if os.geteuid() != 0:
        _check_already(user, group)
        return {}
    chosen: dict[str, Any] = {}
    if group is not None:
        chosen["group"] = _gid(group)
    if user is not None:
        entry = _passwd(user)
        gid = chosen.setdefault("group", entry.pw_gid)
        chosen["user"] = entry.pw_uid
        chosen["extra_groups"] = os.getgrouplist(entry.pw_name, gid)
        chosen["environment"] = {
            "HOME": entry.pw_dir,
            "USER": entry.pw_name,
            "LOGNAME": entry.pw_name,
        }
    return chosen


def _check_already(user: str | None, group: str | None) -> None:
    """Nothing, if this process already is `user` and `group`; else IdentityError."""
    uid, gid = os.geteuid(), os.getegid()
    asked_gid = _gid(group) if group is not None else None
    if user is not None:
        # Ourselves by number needs no passwd entry.
        entry = None if _is_id(user) and int(user) == uid else _passwd(user)
        if asked_gid is None and entry is not None:
            asked_gid = entry.pw_gid
        if (int(user) if entry is None else entry.pw_uid) != uid:
            _refuse("user", user)
    if asked_gid is not None and asked_gid != gid:
        _refuse("group" if group is not None else "user", group or user or "")


def _refuse(setting: str, value: str) -> None:
    raise IdentityError(
        setting,
        value,
        "only root can run the children as another user or group "
        f"(corral runs as uid {os.geteuid()}, gid {os.getegid()})",
    )


def owner(chosen: dict[str, Any]) -> tuple[int, int] | None:
    """(uid, gid) for os.chown from what `identity()` chose (-1: left as is); None for neither."""
    if not chosen:
        return None
    return chosen.get("user", -1), chosen.get("group", -1)


_ID_MAX = 2**32 - 2  # the largest uid or gid: (uid_t) -1 means "unchanged"


def _is_id(name: str) -> bool:
    """Whether `name` is a numeric id (ASCII digits only: int() reads other scripts' too)."""
    return name.isascii() and name.isdigit() and int(name) <= _ID_MAX


def _passwd(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(user)) if _is_id(user) else pwd.getpwnam(user)
    except (KeyError, ValueError):  # none, or a NUL in the name
        raise IdentityError("user", user, "no such user") from None


def _gid(group: str) -> int:
    if _is_id(group):
        return int(group)  # a number needs no entry in the group database
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):  # none, or a NUL in the name
        raise IdentityError("group", group, "no such group") from None
