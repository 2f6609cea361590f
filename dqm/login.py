"""An optional login for the DQM page (``na64 dqm --login-file FILE``), through Bokeh's auth hooks.

The file holds one ``USER:PASSWORD`` per line (blank lines and ``#`` comments ignored) and should be
readable only by the DQM's user. Without a valid login every page and websocket request is sent to
``/login``; a login sets a signed cookie (the secret is new at every start: a restart logs everyone out).
A wrong password costs the asker one second. docs/dqm.md, "Exposing the page", says when to use it.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from bokeh.server.auth_provider import AuthProvider
from tornado.web import RequestHandler

from dqm.errors import DqmUserError

log = logging.getLogger(__name__)

COOKIE = "na64_dqm_user"
LOGIN_URL = "/login"
LOGOUT_URL = "/logout"

_FORM = """<!doctype html><html><head><title>NA64 DQM login</title></head>
<body style="font-family: sans-serif; margin: 4em">
<h2>NA64 DQM</h2><p>{message}</p>
<form method="post" action="{action}">{xsrf}
<p><label>User <input name="user" autofocus></label></p>
<p><label>Password <input name="password" type="password"></label></p>
<p><input type="submit" value="Log in"></p></form></body></html>
"""


@dataclass(frozen=True)
class LoginFile:
    """The users allowed to see the page and their passwords."""

    path: str
    users: dict[str, str] = field(repr=False)

    @classmethod
    def load(cls, path: str) -> LoginFile:
        try:
            st = os.stat(path)
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise DqmUserError(f"--login-file {path}: cannot read it ({e.strerror or e})") from None
        users: dict[str, str] = {}
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user or not password:
                raise DqmUserError(f"--login-file {path}, line {n}: expected USER:PASSWORD")
            users[user] = password
        if not users:
            raise DqmUserError(f"--login-file {path}: no USER:PASSWORD line")
        if st.st_mode & 0o077:
            log.warning("--login-file %s is readable by other users: chmod 600 it", path)
        return cls(path, users)

    def check(self, user: str, password: str) -> bool:
        """Whether ``user`` logs in with ``password`` (compared in constant time)."""
        want = self.users.get(user)
        given = password.encode()
        if want is None:
            hmac.compare_digest(given, given)  # the same work for an unknown user
            return False
        return hmac.compare_digest(want.encode(), given)


class PageLogin(AuthProvider):
    """Bokeh's auth hooks for a :class:`LoginFile`: the user is the signed cookie's value."""

    def __init__(self, logins: LoginFile) -> None:
        self.logins = logins
        #: the cookie-signing secret (Bokeh's ``cookie_secret``)
        self.cookie_secret = secrets.token_hex(32)
        super().__init__()

    @property
    def get_user(self) -> Any:
        def user(handler: RequestHandler) -> str | None:
            value = handler.get_signed_cookie(COOKIE, max_age_days=1)
            return value.decode() if value else None

        return user

    @property
    def login_url(self) -> str:
        return LOGIN_URL

    @property
    def login_handler(self) -> type[RequestHandler]:
        logins = self.logins

        class Login(RequestHandler):
            def get(self) -> None:
                self._form("Log in to see the monitoring page.")

            async def post(self) -> None:
                user = self.get_argument("user", "")
                if logins.check(user, self.get_argument("password", "")):
                    self.set_signed_cookie(COOKIE, user, expires_days=1, httponly=True, samesite="Strict")
                    log.info("DQM page: %s logged in from %s", user, self.request.remote_ip)
                    self.redirect(self.get_argument("next", "/"))
                    return
                log.warning("DQM page: failed login for %r from %s", user, self.request.remote_ip)
                await asyncio.sleep(1.0)
                self.set_status(403)
                self._form("Wrong user or password.")

            def _form(self, message: str) -> None:
                nxt = html.escape(self.get_argument("next", "/"), quote=True)
                self.write(
                    _FORM.format(
                        message=html.escape(message),
                        action=f"{LOGIN_URL}?next={nxt}",
                        xsrf=self.xsrf_form_html(),
                    )
                )

        return Login

    @property
    def logout_url(self) -> str:
        return LOGOUT_URL

    @property
    def logout_handler(self) -> type[RequestHandler]:
        class Logout(RequestHandler):
            def get(self) -> None:
                self.clear_cookie(COOKIE)
                self.redirect(LOGIN_URL)

        return Logout
