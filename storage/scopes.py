"""Who sees what: the scopes a row belongs to and the scopes a principal reads.

A scope is a string: `public` (published listings), `admin` (everything admins see) and
`u:<user id>` (one user's own rows). A change is logged once per scope it touches, so a pull
reads only its principal's scopes through the (scope, position) index.
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLIC = "public"
ADMIN = "admin"
NO_SCOPES: frozenset[str] = frozenset()


def user_scope(user_id: str) -> str:
    return f"u:{user_id}"


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scopes(self) -> tuple[str, ...]:
        # Admins read `admin` (which holds every listing) instead of `public`, so no change
        # reaches them twice.
        return (ADMIN if self.is_admin else PUBLIC, user_scope(self.user_id))


def listing_scopes(status: str, deleted: bool) -> frozenset[str]:
    if deleted:
        return NO_SCOPES
    if status == "published":
        return frozenset({PUBLIC, ADMIN})
    return frozenset({ADMIN})


def owned_scopes(owner_id: str) -> frozenset[str]:
    return frozenset({ADMIN, user_scope(owner_id)})


def personal_scopes(owner_id: str) -> frozenset[str]:
    """Notifications: their owner only, admins included (an admin's own notifications)."""
    return frozenset({user_scope(owner_id)})


ADMIN_ONLY: frozenset[str] = frozenset({ADMIN})
