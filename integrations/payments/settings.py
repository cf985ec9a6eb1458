"""MIPS-style gateway settings; absent credentials = online payments off (cash on delivery
still works)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MipsSettings:
    api_url: str
    id_merchant: str
    id_entity: str
    id_operator: str
    operator_password: str = field(repr=False)
    basic_user: str = ""
    basic_password: str = field(default="", repr=False)
    salt: str = field(default="", repr=False)
    cipher_key: str = field(default="", repr=False)
    amount_in_cents: bool = False
    return_url: str = "http://127.0.0.1:8000/payments/return"

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> MipsSettings | None:
        required = (
            "MIPS_API_URL",
            "MIPS_ID_MERCHANT",
            "MIPS_ID_ENTITY",
            "MIPS_ID_OPERATOR",
            "MIPS_OPERATOR_PASSWORD",
        )
        if not all(env.get(name) for name in required):
            return None
        return cls(
            api_url=env["MIPS_API_URL"].rstrip("/"),
            id_merchant=env["MIPS_ID_MERCHANT"],
            id_entity=env["MIPS_ID_ENTITY"],
            id_operator=env["MIPS_ID_OPERATOR"],
            operator_password=env["MIPS_OPERATOR_PASSWORD"],
            basic_user=env.get("MIPS_BASIC_USER", ""),
            basic_password=env.get("MIPS_BASIC_PASSWORD", ""),
            salt=env.get("MIPS_SALT", ""),
            cipher_key=env.get("MIPS_CIPHER_KEY", ""),
            amount_in_cents=env.get("MIPS_AMOUNT_IN_CENTS", "false").lower() in ("1", "true"),
            return_url=env.get("MIPS_RETURN_URL", "http://127.0.0.1:8000/payments/return"),
        )
