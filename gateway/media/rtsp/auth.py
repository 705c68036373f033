"""RTSP authentication: HTTP Basic and Digest (RFC 2617, MD5, with and without
``qop=auth``), for both ends of a connection. RTSP reuses HTTP's WWW-Authenticate /
Authorization headers unchanged (RFC 2326 appendix)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.media.rtsp.message import RtspError


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "basic" or "digest"
    params: dict[str, str] = field(default_factory=dict)


def parse_auth_params(text: str) -> dict[str, str]:
    """``key=value, key="quoted, value"`` pairs; keys lower-cased, quotes and escapes removed."""
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,":
            i += 1
        start = i
        while i < n and text[i] not in "= \t,":
            i += 1
        key = text[start:i].lower()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "=":
            if key:
                params[key] = ""
            continue
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            value = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
            i += 1  # closing quote
            params[key] = "".join(value)
        else:
            start = i
            while i < n and text[i] != ",":
                i += 1
            params[key] = text[start:i].strip()
    return params


def parse_challenges(values: list[str]) -> list[Challenge]:
    """The challenges of every WWW-Authenticate header value (one scheme per value, as
    RTSP servers send them)."""
    challenges = []
    for value in values:
        scheme, _, rest = value.strip().partition(" ")
        if scheme:
            challenges.append(Challenge(scheme.lower(), parse_auth_params(rest)))
    return challenges


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_response(
    *,
    user: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The ``response`` of RFC 2617 3.2.2.1 (algorithm MD5)."""
    ha1 = _md5(f"{user}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    if qop:
        return _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _md5(f"{ha1}:{nonce}:{ha2}")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ClientAuth:
    """Credentials of a client and the challenge it last got. `authorization` gives the
    header value for a request, None before any challenge (credentials are only sent when
    asked for)."""

    def __init__(
        self, user: str, password: str, *, cnonce: Callable[[], str] = lambda: os.urandom(8).hex()
    ) -> None:
        self.user = user
        self.password = password
        self.challenge: Challenge | None = None
        self._cnonce = cnonce
        self._nc = 0

    def challenged(self, values: list[str]) -> bool:
        """Take the WWW-Authenticate values of a 401. True when answering it is worth a try:
        a new challenge, or a stale nonce; False when the same credentials already failed
        against it, or no supported scheme is offered."""
        offered = parse_challenges(values)
        chosen = next((c for c in offered if c.scheme == "digest"), None)
        if chosen is not None:
            algorithm = chosen.params.get("algorithm", "MD5").upper()
            if algorithm != "MD5" or "nonce" not in chosen.params:
                chosen = None
        if chosen is None:
            chosen = next((c for c in offered if c.scheme == "basic"), None)
        if chosen is None:
            return False
        previous, self.challenge = self.challenge, chosen
        if previous is None or previous.scheme != chosen.scheme:
            return True
        if chosen.scheme == "digest":
            stale = chosen.params.get("stale", "").lower() == "true"
            if stale or chosen.params.get("nonce") != previous.params.get("nonce"):
                self._nc = 0
                return True
        return False

    def authorization(self, method: str, uri: str) -> str | None:
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return f"Basic {token}"
        params = challenge.params
        realm, nonce = params.get("realm", ""), params["nonce"]
        offered_qop = [q.strip().lower() for q in params.get("qop", "").split(",")]
        qop = "auth" if "auth" in offered_qop else None
        fields = [
            f"username={_quote(self.user)}",
            f"realm={_quote(realm)}",
            f"nonce={_quote(nonce)}",
            f"uri={_quote(uri)}",
        ]
        if qop:
            self._nc += 1
            nc, cnonce = f"{self._nc:08x}", self._cnonce()
            response = digest_response(
                user=self.user,
                password=self.password,
                realm=realm,
                nonce=nonce,
                method=method,
                uri=uri,
                qop=qop,
                nc=nc,
                cnonce=cnonce,
            )
            fields += [f"response={_quote(response)}", f"qop={qop}", f"nc={nc}", f"cnonce={_quote(cnonce)}"]
        else:
            response = digest_response(
                user=self.user, password=self.password, realm=realm, nonce=nonce, method=method, uri=uri
            )
            fields.append(f"response={_quote(response)}")
        if "opaque" in params:
            fields.append(f"opaque={_quote(params['opaque'])}")
        fields.append("algorithm=MD5")
        return "Digest " + ", ".join(fields)


class ServerAuth:
    """One user and password a server requires. It challenges with Digest (the password
    never crosses the wire) and accepts Basic too, from clients that only speak that."""

    def __init__(
        self, user: str, password: str, *, realm: str = "skyrelay", nonce: str | None = None
    ) -> None:
        self.user = user
        self.password = password
        self.realm = realm
        # One nonce per connection: a response made for another connection does not replay.
        self.nonce = nonce or os.urandom(16).hex()

    def challenge(self) -> str:
        return f"Digest realm={_quote(self.realm)}, nonce={_quote(self.nonce)}, algorithm=MD5"

    def check(self, method: str, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, rest = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(rest.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, colon, password = decoded.partition(":")
            return bool(colon) and _same(user, self.user) & _same(password, self.password)
        if scheme != "digest":
            return False
        params = parse_auth_params(rest)
        if params.get("algorithm", "MD5").upper() != "MD5":
            return False
        if not (_same(params.get("username", ""), self.user) & _same(params.get("nonce", ""), self.nonce)):
            return False
        if params.get("realm", "") != self.realm:
            return False
        qop = params.get("qop", "").lower() or None
        if qop not in (None, "auth") or (qop and not (params.get("nc") and params.get("cnonce"))):
            return False
        expected = digest_response(
            user=self.user,
            password=self.password,
            realm=self.realm,
            nonce=self.nonce,
            method=method,
            uri=params.get("uri", ""),
            qop=qop,
            nc=params.get("nc", ""),
            cnonce=params.get("cnonce", ""),
        )
        return _same(params.get("response", "").lower(), expected)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def split_credentials(userinfo: str) -> tuple[str, str]:
    user, _, password = userinfo.partition(":")
    if not user:
        raise RtspError("empty user name")
    return user, password
