"""Who may connect, publish and play: the access policy.

Three policies, one interface (`AccessPolicy.check` returns None to allow, or the reason
to refuse, which the client is shown):

- `OpenAccess`: everyone may do everything (the demo's default);
- `TokenAccess`: an HMAC-signed token names the stream, the action and an expiry; it
  comes in the WCS `connection.authToken`, a request's `custom.token`, or a URL's
  ``?token=`` (WHEP, HLS, RTSP);
- `HookAccess`: WCS-style REST hooks: skyrelay POSTs `connect`, `publishStream` and
  `playStream` to a backend URL and refuses on anything but 200, with the backend's
  ``info`` as the reason.

`AllOf` combines them: with tokens and hooks both configured, both must allow.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from gateway.log import get_logger

log = get_logger(__name__)


class Action(enum.StrEnum):
    CONNECT = "connect"
    PUBLISH = "publish"
    PLAY = "play"


# The WCS REST hook each action calls.
HOOKS = {Action.CONNECT: "connect", Action.PUBLISH: "publishStream", Action.PLAY: "playStream"}


@dataclass(frozen=True)
class AccessRequest:
    action: Action
    name: str | None  # the stream (None for connect)
    token: str | None = None
    session_id: str = ""
    # What the client sent (the WCS `connection` fields, a request's fields), for hooks.
    details: dict[str, Any] = field(default_factory=dict)


class AccessPolicy(Protocol):
    async def check(self, request: AccessRequest) -> str | None: ...


class OpenAccess:
    async def check(self, request: AccessRequest) -> str | None:
        return None


# --- tokens -------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_token(secret: str, name: str, action: Action, ttl: float, now: float | None = None) -> str:
    """A token that lets its holder do ``action`` on stream ``name`` ("*": any stream) for
    ``ttl`` seconds. A connect token has name "*"."""
    expiry = int((time.time() if now is None else now) + ttl)
    payload = _b64(json.dumps({"n": name, "a": str(action), "e": expiry}, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(signature)}"


@dataclass
class TokenAccess:
    secret: str
    clock: Callable[[], float] = time.time

    async def check(self, request: AccessRequest) -> str | None:
        if not request.token:
            return f"a token is required to {request.action}"
        payload, _, signature = request.token.partition(".")
        expected = hmac.new(self.secret.encode(), payload.encode(), hashlib.sha256).digest()
        try:
            valid = hmac.compare_digest(_unb64(signature), expected)
            claims = json.loads(_unb64(payload)) if valid else {}
        except (ValueError, UnicodeDecodeError):
            valid, claims = False, {}
        if not valid or not isinstance(claims, dict):
            return "invalid token"
        if not isinstance(claims.get("e"), int) or claims["e"] < self.clock():
            return "token expired"
        granted = claims.get("a")
        if request.action is not Action.CONNECT and granted != str(request.action):
            return f"token does not allow {request.action}"
        if request.action is not Action.CONNECT and claims.get("n") not in ("*", request.name):
            return f"token is not for stream {request.name!r}"
        return None


# --- REST hooks ---------------------------------------------------------------------------


@dataclass
class HookAccess:
    """POST ``{base_url}/{connect|publishStream|playStream}`` with a WCS-like body; 200
    allows, anything else refuses with the body's ``info`` (or the status)."""

    base_url: str
    timeout: float = 5.0

    async def check(self, request: AccessRequest) -> str | None:
        hook = HOOKS[request.action]
        body = {
            "nodeId": "skyrelay",
            "appKey": request.details.get("appKey", "defaultApp"),
            "sessionId": request.session_id,
            **({"name": request.name} if request.name is not None else {}),
            **{k: v for k, v in request.details.items() if k not in ("sdp",)},
        }
        url = f"{self.base_url.rstrip('/')}/{hook}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http,
                http.post(url, json=body) as reply,
            ):
                if reply.status == 200:
                    return None
                text = await reply.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("access_hook_unreachable", hook=hook, error=str(exc)[:200])
            return "the authorization backend did not answer"
        try:
            info = json.loads(text).get("info")
        except (ValueError, AttributeError):
            info = None
        return str(info) if info else f"refused by the authorization backend ({reply.status})"


@dataclass
class AllOf:
    policies: Sequence[AccessPolicy]

    async def check(self, request: AccessRequest) -> str | None:
        for policy in self.policies:
            reason = await policy.check(request)
            if reason is not None:
                return reason
        return None


def token_of(fields: dict[str, Any]) -> str | None:
    """The token a WCS request carries: ``custom.token``, else ``authToken``."""
    custom = fields.get("custom")
    if isinstance(custom, dict) and isinstance(custom.get("token"), str):
        return str(custom["token"])
    token = fields.get("authToken")
    return token if isinstance(token, str) else None


def policy_from(secret: str | None, hook_url: str | None) -> AccessPolicy:
    """The policy the configuration asks for: tokens, hooks, both, or open."""
    policies: list[AccessPolicy] = []
    if secret:
        policies.append(TokenAccess(secret))
    if hook_url:
        policies.append(HookAccess(hook_url))
    if not policies:
        return OpenAccess()
    return policies[0] if len(policies) == 1 else AllOf(policies)


def query_authorizer(policy: AccessPolicy, action: Action) -> Callable[[str, str], Awaitable[str | None]]:
    """``policy`` asked by stream name and URL query, the token in ``?token=``: how the RTSP
    server authorizes an ANNOUNCE (publish) or a player's first request (play)."""

    async def authorize(name: str, query: str) -> str | None:
        token = urllib.parse.parse_qs(query).get("token", [None])[0]
        return await policy.check(AccessRequest(action, name, token))

    return authorize
