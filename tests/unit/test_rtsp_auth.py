"""gateway.media.rtsp.auth: Basic and Digest (RFC 2617) for clients and servers, checked
against the RFC's own example and against hashes written out here from its definitions."""

from __future__ import annotations

import base64
import hashlib

from gateway.media.rtsp.auth import (
    ClientAuth,
    ServerAuth,
    digest_response,
    parse_auth_params,
    parse_challenges,
)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_rfc2617_example_with_qop_auth() -> None:
    # RFC 2617 3.5.
    response = digest_response(
        user="Mufasa",
        password="Circle Of Life",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


def test_qop_less_digest_is_rfc2069() -> None:
    response = digest_response(
        user="admin", password="pw", realm="IP Camera", nonce="abc", method="DESCRIBE", uri="rtsp://h/s"
    )
    assert response == md5(f"{md5('admin:IP Camera:pw')}:abc:{md5('DESCRIBE:rtsp://h/s')}")


def test_auth_params_with_quotes_commas_and_escapes() -> None:
    params = parse_auth_params('realm="a, \\"b\\"", nonce=xyz, qop="auth,auth-int", stale=TRUE')
    assert params == {"realm": 'a, "b"', "nonce": "xyz", "qop": "auth,auth-int", "stale": "TRUE"}
    (basic, digest) = parse_challenges(['Basic realm="cam"', 'Digest realm="cam", nonce="n1"'])
    assert (basic.scheme, digest.scheme, digest.params["nonce"]) == ("basic", "digest", "n1")


def test_client_prefers_digest_and_answers_without_qop() -> None:
    auth = ClientAuth("admin", "secret")
    assert auth.authorization("DESCRIBE", "rtsp://h/s") is None  # nothing sent before asked
    assert auth.challenged(['Basic realm="cam"', 'Digest realm="cam", nonce="n1"'])
    header = auth.authorization("DESCRIBE", "rtsp://h/s")
    assert header is not None and header.startswith("Digest ")
    params = parse_auth_params(header[len("Digest ") :])
    expected = md5(f"{md5('admin:cam:secret')}:n1:{md5('DESCRIBE:rtsp://h/s')}")
    assert params["response"] == expected
    assert params["uri"] == "rtsp://h/s" and params["username"] == "admin" and "qop" not in params
    # The same challenge again: the credentials are wrong, do not loop.
    assert not auth.challenged(['Digest realm="cam", nonce="n1"'])
    # A fresh nonce, or the same one marked stale: worth another try.
    assert auth.challenged(['Digest realm="cam", nonce="n2"'])
    assert auth.challenged(['Digest realm="cam", nonce="n2", stale=true'])


def test_client_digest_with_qop_auth_counts_nonces() -> None:
    cnonces = iter(["c1", "c2"])
    auth = ClientAuth("u", "p", cnonce=lambda: next(cnonces))
    assert auth.challenged(['Digest realm="r", nonce="N", qop="auth,auth-int", opaque="O"'])
    first = parse_auth_params(auth.authorization("SETUP", "rtsp://h/s/trackID=0")[7:])  # type: ignore[index]
    second = parse_auth_params(auth.authorization("PLAY", "rtsp://h/s/")[7:])  # type: ignore[index]
    assert (first["nc"], first["cnonce"], first["qop"], first["opaque"]) == ("00000001", "c1", "auth", "O")
    assert (second["nc"], second["cnonce"]) == ("00000002", "c2")
    ha1 = md5("u:r:p")
    assert first["response"] == md5(f"{ha1}:N:00000001:c1:auth:{md5('SETUP:rtsp://h/s/trackID=0')}")


def test_client_basic() -> None:
    auth = ClientAuth("user", "pa:ss")
    assert auth.challenged(['Basic realm="x"'])
    assert auth.authorization("DESCRIBE", "rtsp://h/") == "Basic " + base64.b64encode(b"user:pa:ss").decode()
    assert not auth.challenged(['Basic realm="x"'])
    assert not ClientAuth("u", "p").challenged(
        ["Negotiate abc", 'Digest realm="r", nonce="n", algorithm=SHA-256']
    )


def test_server_accepts_what_clients_send() -> None:
    server = ServerAuth("user", "pass", nonce="0123")
    for qop in ("", ', qop="auth"'):
        client = ClientAuth("user", "pass")
        assert client.challenged([server.challenge() + qop])
        assert server.check("DESCRIBE", client.authorization("DESCRIBE", "rtsp://h/s"))
    basic = ClientAuth("user", "pass")
    basic.challenged(['Basic realm="skyrelay"'])
    assert server.check("PLAY", basic.authorization("PLAY", "rtsp://h/s"))


def test_server_refuses_wrong_credentials_and_garbage() -> None:
    server = ServerAuth("user", "pass", nonce="0123")
    wrong = ClientAuth("user", "nope")
    wrong.challenged([server.challenge()])
    other_user = ClientAuth("admin", "pass")
    other_user.challenged([server.challenge()])
    replayed = ClientAuth("user", "pass")
    replayed.challenged(['Digest realm="skyrelay", nonce="another-connection"'])
    good = ClientAuth("user", "pass")
    good.challenged([server.challenge()])
    header = good.authorization("DESCRIBE", "rtsp://h/s")
    assert header is not None
    for authorization in (
        None,
        "",
        wrong.authorization("DESCRIBE", "rtsp://h/s"),
        other_user.authorization("DESCRIBE", "rtsp://h/s"),
        replayed.authorization("DESCRIBE", "rtsp://h/s"),
        "Basic " + base64.b64encode(b"user:nope").decode(),
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"\xff\xfe").decode(),
        "Bearer token",
        "Digest garbage",
        header.replace("algorithm=MD5", "algorithm=SHA-256"),
    ):
        assert not server.check("DESCRIBE", authorization)
    # The response covers the method: the same header does not authorize another one.
    assert server.check("DESCRIBE", header) and not server.check("TEARDOWN", header)
