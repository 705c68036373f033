"""gateway.access: HMAC tokens, checked with an explicit clock."""

from __future__ import annotations

import pytest

from gateway.access import AccessRequest, Action, AllOf, OpenAccess, TokenAccess, mint_token, token_of

SECRET = "s3cret"
NOW = 1_800_000_000.0


def policy() -> TokenAccess:
    return TokenAccess(SECRET, clock=lambda: NOW)


async def check(token: str | None, action: Action = Action.PLAY, name: str | None = "cam") -> str | None:
    return await policy().check(AccessRequest(action, name, token))


async def test_a_token_allows_its_action_on_its_stream_until_it_expires() -> None:
    token = mint_token(SECRET, "cam", Action.PLAY, ttl=60, now=NOW)
    assert await check(token) is None
    assert await check(token, Action.CONNECT, None) is None  # any valid token lets one connect
    assert await check(token, Action.PUBLISH) == "token does not allow publish"
    assert await check(token, name="other") == "token is not for stream 'other'"
    assert await check(mint_token(SECRET, "cam", Action.PLAY, ttl=60, now=NOW - 61)) == "token expired"
    assert await check(mint_token(SECRET, "*", Action.PLAY, ttl=60, now=NOW), name="any/name") is None


@pytest.mark.parametrize(
    "token",
    [
        mint_token("another secret", "cam", Action.PLAY, ttl=60, now=NOW),  # forged
        mint_token(SECRET, "cam", Action.PLAY, ttl=60, now=NOW)[:-2] + "AA",  # signature altered
        "garbage",
        "",
        "a.b.c",
        "%%%.$$$",
    ],
)
async def test_forged_or_garbled_tokens_are_refused(token: str) -> None:
    assert await check(token) in ("invalid token", "a token is required to play")


async def test_no_token() -> None:
    assert await check(None) == "a token is required to play"


async def test_the_token_of_a_request_and_combined_policies() -> None:
    assert token_of({"custom": {"token": "t1"}, "authToken": "t2"}) == "t1"
    assert token_of({"authToken": "t2"}) == "t2"
    assert token_of({"custom": "x"}) is None
    both = AllOf([OpenAccess(), policy()])
    assert await both.check(AccessRequest(Action.PLAY, "cam", None)) == "a token is required to play"
