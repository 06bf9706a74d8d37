"""Who may read and write the control plane: seed 000's `settings:read` / `settings:write` permissions.

- On loopback (the default bind) reads are open and writes need the admin token when one is set, as before.
- Bound beyond loopback (`Settings.zoo_bind_host` not a loopback address), or for any request whose client
  address is a non-loopback IP: reads need `Authorization: Bearer <token>` with the settings:read token
  (`ZOO_SETTINGS_READ_TOKEN`), the settings:write token or the admin token; writes need the settings:write
  token (`ZOO_SETTINGS_WRITE_TOKEN`) or the admin token. With no token configured such requests are refused
  (401 naming the variable to set): never open by omission.
A token may also come as `?token=` (browsers' EventSource and WebSocket cannot set headers; such URLs
end up in access logs, so prefer the header). Tokens are compared in constant time. This module reads no
environment: the plane passes `Settings` values.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from serving.errors import Unauthorized

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str | None) -> bool | None:
    """True/False for an IP or a loopback name; None when `host` is not an address (e.g. a test client)."""
    if not host:
        return None
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return None


def _bearer(conn: HTTPConnection) -> str:
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return conn.headers.get("x-admin-token", "") or conn.query_params.get("token", "")


def _matches(given: str, *tokens: str | None) -> bool:
    return bool(given) and any(t and secrets.compare_digest(given.encode(), t.encode()) for t in tokens)


@dataclass(frozen=True)
class Access:
    """The tokens and the bind address of one gateway."""

    admin_token: str | None = None
    read_token: str | None = None
    write_token: str | None = None
    bind_host: str | None = None

    def beyond_loopback(self, conn: HTTPConnection) -> bool:
        if self.bind_host and is_loopback(self.bind_host) is not True:
            return True
        return is_loopback(conn.client.host if conn.client else None) is False

    def read(self, conn: HTTPConnection) -> str | None:
        """settings:read; returns who (None = anonymous on loopback)."""
        if not self.beyond_loopback(conn):
            return None
        given = _bearer(conn)
        if _matches(given, self.write_token, self.admin_token):
            return "settings:write"
        if _matches(given, self.read_token):
            return "settings:read"
        if not (self.read_token or self.write_token or self.admin_token):
            raise Unauthorized("the gateway is bound beyond loopback and no token is configured: set "
                               "ZOO_SETTINGS_READ_TOKEN (settings:read) and ZOO_SETTINGS_WRITE_TOKEN (settings:write)")
        raise Unauthorized("this read needs settings:read: Authorization: Bearer <ZOO_SETTINGS_READ_TOKEN>")

    def write(self, conn: HTTPConnection) -> str | None:
        """settings:write (or the admin token); returns who."""
        given = _bearer(conn)
        if _matches(given, self.admin_token):
            return "admin"
        if _matches(given, self.write_token):
            return "settings:write"
        if not self.beyond_loopback(conn) and not (self.admin_token or self.write_token):
            return None  # loopback with no token configured: open, as documented
        if not (self.write_token or self.admin_token):
            raise Unauthorized("the gateway is bound beyond loopback and no write token is configured: set "
                               "ZOO_SETTINGS_WRITE_TOKEN (settings:write)")
        raise Unauthorized("this operation needs settings:write: Authorization: Bearer <ZOO_SETTINGS_WRITE_TOKEN> "
                           "(or the admin token)")
