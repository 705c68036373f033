"""gateway.media.webrtc.sdp on Chrome's offers from the WCS documentation and edits of them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiortc.sdp import SessionDescription

from gateway.media.stream import Codec
from gateway.media.webrtc import sdp
from gateway.media.webrtc.sdp import OfferError

H264 = Codec("H264", 90000)
VP8 = Codec("VP8", 90000)
OPUS = Codec("opus", 48000, {"channels": 2})
PCMA = Codec("PCMA", 8000)

Keep = Callable[[str, str], bool]  # (rtpmap "H264/90000", fmtp "packetization-mode=1;...") -> keep?


def keep_codecs(offer: str, kind: str, keep: Keep) -> str:
    """Drop from the ``kind`` section every payload type ``keep`` rejects (and RTX/FEC of them)."""
    lines = offer.split("\r\n")
    section = ""
    rtpmap: dict[str, str] = {}
    fmtp: dict[str, str] = {}
    for line in lines:
        if line.startswith("m="):
            section = line[2:].split(" ")[0]
        elif section == kind and line.startswith("a=rtpmap:"):
            pt, value = line[len("a=rtpmap:") :].split(" ", 1)
            rtpmap[pt] = value
        elif section == kind and line.startswith("a=fmtp:"):
            pt, value = line[len("a=fmtp:") :].split(" ", 1)
            fmtp[pt] = value
    kept = {pt for pt, name in rtpmap.items() if keep(name, fmtp.get(pt, ""))}
    kept |= {pt for pt, value in fmtp.items() if value.startswith("apt=") and value[4:] in kept}
    dropped = set(rtpmap) - kept
    out: list[str] = []
    section = ""
    for line in lines:
        if line.startswith("m="):
            section = line[2:].split(" ")[0]
            if section == kind:
                parts = line.split(" ")
                line = " ".join(parts[:3] + [pt for pt in parts[3:] if pt in kept])
        elif section == kind and line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            pt = line.split(":", 1)[1].split(" ", 1)[0]
            if pt in dropped:
                continue
        out.append(line)
    return "\r\n".join(out)


def only(*names: str, fmtp: str = "") -> Keep:
    def keep(rtpmap: str, params: str) -> bool:
        return rtpmap.split("/")[0] in names and fmtp in params

    return keep


def drop_section(offer: str, kind: str) -> str:
    out: list[str] = []
    section = ""
    for line in offer.split("\r\n"):
        if line.startswith("m="):
            section = line[2:].split(" ")[0]
        if section != kind:
            out.append(line)
    return "\r\n".join(out).replace("a=group:BUNDLE audio video", "a=group:BUNDLE audio")


def mime_types(media: sdp.OfferedMedia) -> list[str]:
    return [c.mimeType for c in media.codecs]


# --- parse_offer ------------------------------------------------------------------------------------


def test_parse_chrome_publish_offer(publish_offer: str) -> None:
    media = sdp.parse_offer(publish_offer)
    assert [(m.kind, m.direction) for m in media] == [("audio", "sendonly"), ("video", "sendonly")]
    assert mime_types(media[0])[0] == "audio/opus"
    assert media[0].codecs[0].payloadType == 111
    video = mime_types(media[1])
    assert "video/H264" in video and "video/VP8" in video and "video/VP9" in video
    h264 = [c for c in media[1].codecs if c.mimeType == "video/H264"]
    assert {c.parameters["packetization-mode"] for c in h264} == {"0", "1"}


def test_parse_chrome_play_offer(play_offer: str) -> None:
    media = sdp.parse_offer(play_offer)
    assert [(m.kind, m.direction) for m in media] == [("audio", "recvonly"), ("video", "recvonly")]


def test_parse_offer_with_bare_newlines(publish_offer: str) -> None:
    media = sdp.parse_offer(publish_offer.replace("\r\n", "\n"))
    assert len(media) == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "\x00\x01\x02",
        "o=- 1 2 IN IP4 127.0.0.1\r\nv=0\r\n",
        "v=0",
        "v=0\r\nfoo\r\nbar",
        "v=0\r\nm=video abc",
        "v=0\r\nm=audio x y z\r\n",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus\r\n",
        pytest.param("v=0\r\n" + "a=x\r\n" * 10_000, id="10000-junk-attributes"),
        '{"type": "offer"}',
    ],
)
def test_garbage_sdp(text: str) -> None:
    with pytest.raises(OfferError) as info:
        sdp.parse_offer(text)
    message = str(info.value)
    assert message.startswith("Invalid SDP")
    assert len(message) <= 300


def test_no_media(publish_offer: str) -> None:
    head = publish_offer.split("m=audio")[0]
    with pytest.raises(OfferError, match="no audio or video"):
        sdp.parse_offer(head)


def test_data_channel_only() -> None:
    offer = (
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
        "a=fingerprint:sha-256 " + ":".join(["AA"] * 32) + "\r\na=setup:actpass\r\na=mid:0\r\n"
        "a=sctp-port:5000\r\n"
    )
    with pytest.raises(OfferError, match="no audio or video"):
        sdp.parse_offer(offer)


def test_offer_without_ice_credentials(publish_offer: str) -> None:
    offer = "\r\n".join(line for line in publish_offer.split("\r\n") if not line.startswith("a=ice-pwd"))
    with pytest.raises(OfferError, match="ICE"):
        sdp.parse_offer(offer)


def test_offer_without_fingerprint(publish_offer: str) -> None:
    offer = "\r\n".join(line for line in publish_offer.split("\r\n") if not line.startswith("a=fingerprint"))
    with pytest.raises(OfferError, match="fingerprint"):
        sdp.parse_offer(offer)


def test_session_level_fingerprint_is_enough(publish_offer: str) -> None:
    # Firefox puts a=fingerprint at session level.
    lines = publish_offer.split("\r\n")
    fingerprint = next(line for line in lines if line.startswith("a=fingerprint"))
    lines = [line for line in lines if not line.startswith("a=fingerprint")]
    lines.insert(lines.index("t=0 0") + 1, fingerprint)
    assert len(sdp.parse_offer("\r\n".join(lines))) == 2


# --- check_publish_offer ---------------------------------------------------------------------------


def test_chrome_publish_offer_is_accepted(publish_offer: str) -> None:
    sdp.check_publish_offer(sdp.parse_offer(publish_offer))


@pytest.mark.parametrize(
    "keep",
    [
        pytest.param(only("H264", fmtp="packetization-mode=1"), id="h264-pm1"),
        pytest.param(only("H264", fmtp="profile-level-id=42e01f"), id="h264-42e01f"),
        pytest.param(only("VP8"), id="vp8"),
        pytest.param(only("VP8", "VP9"), id="vp8-vp9"),
    ],
)
def test_publish_video_codecs_accepted(publish_offer: str, keep: Keep) -> None:
    offer = keep_codecs(publish_offer, "video", keep)
    sdp.check_publish_offer(sdp.parse_offer(offer))


@pytest.mark.parametrize(
    "keep",
    [
        pytest.param(only("H264", fmtp="packetization-mode=0"), id="h264-pm0-only"),
        pytest.param(only("VP9"), id="vp9-only"),
        pytest.param(only("red", "ulpfec"), id="fec-only"),
    ],
)
def test_publish_video_codecs_refused(publish_offer: str, keep: Keep) -> None:
    offer = keep_codecs(publish_offer, "video", keep)
    with pytest.raises(OfferError) as info:
        sdp.check_publish_offer(sdp.parse_offer(offer))
    message = str(info.value)
    assert "video" in message
    assert "H264" in message and "VP8" in message


@pytest.mark.parametrize("codec", ["opus", "PCMU", "PCMA"])
def test_publish_audio_codecs_accepted(publish_offer: str, codec: str) -> None:
    offer = keep_codecs(publish_offer, "audio", only(codec))
    sdp.check_publish_offer(sdp.parse_offer(offer))


@pytest.mark.parametrize("codecs", [("G722",), ("ISAC",), ("ISAC", "G722", "CN", "telephone-event")])
def test_publish_audio_codecs_refused(publish_offer: str, codecs: tuple[str, ...]) -> None:
    offer = keep_codecs(publish_offer, "audio", only(*codecs))
    with pytest.raises(OfferError) as info:
        sdp.check_publish_offer(sdp.parse_offer(offer))
    assert "audio" in str(info.value)
    assert "Opus" in str(info.value)


def test_publish_video_only(publish_offer: str) -> None:
    sdp.check_publish_offer(sdp.parse_offer(drop_section(publish_offer, "audio")))


def test_publish_audio_only(publish_offer: str) -> None:
    sdp.check_publish_offer(sdp.parse_offer(drop_section(publish_offer, "video")))


def test_publish_offer_that_sends_nothing(play_offer: str) -> None:
    with pytest.raises(OfferError, match="sends no media"):
        sdp.check_publish_offer(sdp.parse_offer(play_offer))


def test_publish_sendrecv_is_accepted(publish_offer: str) -> None:
    sdp.check_publish_offer(sdp.parse_offer(publish_offer.replace("a=sendonly", "a=sendrecv")))


def test_publish_refusal_names_the_kind_with_a_good_other_kind(publish_offer: str) -> None:
    offer = keep_codecs(publish_offer, "video", only("VP9"))
    offer = keep_codecs(offer, "audio", only("opus"))
    with pytest.raises(OfferError, match="No usable video codec"):
        sdp.check_publish_offer(sdp.parse_offer(offer))


# --- check_play_offer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("video", "audio"),
    [(H264, OPUS), (VP8, OPUS), (H264, None), (None, OPUS), (VP8, PCMA), (H264, Codec("PCMU", 8000))],
)
def test_chrome_play_offer_plays_every_relayable_stream(
    play_offer: str, video: Codec | None, audio: Codec | None
) -> None:
    sdp.check_play_offer(sdp.parse_offer(play_offer), video, audio)


def test_player_without_the_streams_video_codec(play_offer: str) -> None:
    offer = keep_codecs(play_offer, "video", only("VP8", "VP9"))
    with pytest.raises(OfferError) as info:
        sdp.check_play_offer(sdp.parse_offer(offer), H264, OPUS)
    message = str(info.value)
    assert "H264" in message and "video" in message


def test_player_without_the_streams_audio_codec(play_offer: str) -> None:
    offer = keep_codecs(play_offer, "audio", only("opus"))
    with pytest.raises(OfferError) as info:
        sdp.check_play_offer(sdp.parse_offer(offer), H264, PCMA)
    assert "PCMA" in str(info.value) and "audio" in str(info.value)


def test_player_with_only_h264_packetization_mode_0(play_offer: str) -> None:
    offer = keep_codecs(play_offer, "video", only("H264", fmtp="packetization-mode=0"))
    with pytest.raises(OfferError, match="H264"):
        sdp.check_play_offer(sdp.parse_offer(offer), H264, OPUS)


def test_player_that_receives_nothing(publish_offer: str) -> None:
    with pytest.raises(OfferError, match="receives no media"):
        sdp.check_play_offer(sdp.parse_offer(publish_offer), H264, OPUS)


def test_audio_only_player_of_a_video_only_stream(play_offer: str) -> None:
    offer = drop_section(play_offer, "video")
    with pytest.raises(OfferError, match="none of the media kinds"):
        sdp.check_play_offer(sdp.parse_offer(offer), H264, None)


def test_video_only_player_of_an_audio_and_video_stream(play_offer: str) -> None:
    sdp.check_play_offer(sdp.parse_offer(drop_section(play_offer, "audio")), H264, OPUS)


def test_stream_without_codecs(play_offer: str) -> None:
    with pytest.raises(OfferError, match="none of the media kinds"):
        sdp.check_play_offer(sdp.parse_offer(play_offer), None, None)


# --- add_public_candidates ----------------------------------------------------------------------------

ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 3905823498 3905823498 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=audio 40000 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 192.0.2.2",
        "a=sendonly",
        "a=mid:0",
        "a=msid:cam audio-track",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=candidate:a1b2c3 1 udp 2130706431 192.0.2.2 40000 typ host",
        "a=candidate:d4e5f6 1 udp 2130706431 10.0.0.5 40001 typ host",
        "a=candidate:x7 1 udp 1694498815 198.51.100.9 50000 typ srflx raddr 192.0.2.2 rport 40000",
        "a=candidate:tcp1 1 tcp 1518280447 192.0.2.2 9 typ host tcptype passive",
        "a=end-of-candidates",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:active",
        "",
    ]
)


def candidates(text: str) -> list[str]:
    return [line for line in text.split("\r\n") if line.startswith("a=candidate:")]


def test_add_public_candidates_duplicates_host_candidates() -> None:
    out = sdp.add_public_candidates(ANSWER, "203.0.113.7")
    assert candidates(out) == [
        "a=candidate:a1b2c3 1 udp 2130706431 192.0.2.2 40000 typ host",
        "a=candidate:pa1b2c3 1 udp 2130706430 203.0.113.7 40000 typ host",
        "a=candidate:d4e5f6 1 udp 2130706431 10.0.0.5 40001 typ host",
        "a=candidate:pd4e5f6 1 udp 2130706430 203.0.113.7 40001 typ host",
        "a=candidate:x7 1 udp 1694498815 198.51.100.9 50000 typ srflx raddr 192.0.2.2 rport 40000",
        "a=candidate:tcp1 1 tcp 1518280447 192.0.2.2 9 typ host tcptype passive",
        "a=candidate:ptcp1 1 tcp 1518280446 203.0.113.7 9 typ host tcptype passive",
    ]
    # every other line is unchanged and in order
    others = [line for line in out.split("\r\n") if not line.startswith("a=candidate:p")]
    assert others == ANSWER.split("\r\n")
    assert out.endswith("\r\n")


def test_add_public_candidates_skips_candidates_already_public() -> None:
    out = sdp.add_public_candidates(ANSWER, "192.0.2.2")
    added = [c for c in candidates(out) if c not in candidates(ANSWER)]
    assert added == [
        "a=candidate:pd4e5f6 1 udp 2130706430 192.0.2.2 40001 typ host",
    ]


def test_add_public_candidates_result_parses() -> None:
    out = sdp.add_public_candidates(ANSWER, "203.0.113.7")
    description = SessionDescription.parse(out)
    found = [(c.ip, c.port, c.type) for c in description.media[0].ice_candidates]
    assert ("203.0.113.7", 40000, "host") in found
    assert ("203.0.113.7", 40001, "host") in found
    assert len(found) == 7


def test_add_public_candidates_without_candidates() -> None:
    text = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    assert sdp.add_public_candidates(text, "203.0.113.7") == text
