"""RTMP republishing (WCS ``push/*``): a live Stream published to another RTMP server
(``rtmp[s]://host[:port]/app/streamkey``). A thin I/O layer around the sans-I/O
`RtmpClientConnection`, `AvcTagWriter` and `AacTagWriter`.

Each connection subscribes to the Stream once the far end has accepted the publish, so it
starts at a keyframe (the cached one, or the GOP so far) with timestamps from 0. H.264 goes
out as FLV tags as it is. Audio (Opus, PCMU or PCMA: FLV carries neither, RTMP servers
expect AAC) is transcoded to AAC-LC, 48 kHz stereo, by a `ToAac` of the connection's own,
on the video's timeline; a stream without audio is republished without. A far end that
reads slowly makes the bounded subscription queues skip (video to the next keyframe), and
one that reads nothing for ``timeout`` seconds is dropped: other sinks never wait. A
dropped connection is retried with capped exponential backoff until the stream ends or
`stop` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
import uuid
from fractions import Fraction
from typing import Any

from gateway.log import get_logger
from gateway.media.audio_align import AudioAligner
from gateway.media.audio_transcode import AAC_BIT_RATE, AAC_RATE, ToAac, aac_transcodable
from gateway.media.registry import StreamRegistry
from gateway.media.rtmp.chunks import RtmpError
from gateway.media.rtmp.client import (
    ConnectionClosed,
    Refused,
    RtmpClientConnection,
    RtmpUrl,
    parse_rtmp_url,
)
from gateway.media.rtmp.flv import AAC_SOUND_FORMAT, AVC_CODEC_ID, AacTagWriter, AvcTagWriter
from gateway.media.stream import FrameQueue, Stream, Subscription
from gateway.reconnect import ReconnectDelay
from gateway.tasks import TaskSet

log = get_logger(__name__)

READ_SIZE = 65536
QUEUE_FRAMES = 90  # 3 s at 30 fps before a slow far end skips to the next keyframe
# Unsent bytes above which `drain` waits: a few frames, so the queue above does the dropping.
WRITE_BUFFER = 256 * 1024
# Refusals in a row (a bad stream key, a name in use) before giving up for good.
MAX_REFUSALS = 5


class RepublishStatus(enum.StrEnum):
    CONNECTING = "CONNECTING"
    PUBLISHING = "PUBLISHING"
    RECONNECTING = "RECONNECTING"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


class RepublishRefused(Exception):
    """The far end refused the connect or the publish (its words in the message)."""


class StreamNotLive(LookupError):
    """No live stream of that name to republish."""


class Timeline:
    """One connection's RTMP timestamps: milliseconds from its first video frame, for audio
    as for video, neither kind ever going back (RTMP servers and FLV files take a step back
    as a new stream)."""

    def __init__(self) -> None:
        self.video_base: int | None = None  # ms of the first video frame, on the stream's clock
        self.video_time_base: Fraction | None = None
        self.aligner = AudioAligner()  # from the stream's audio ms to this timeline's
        self.last_video = 0
        self.last_audio = 0

    @property
    def audio_offset(self) -> int | None:
        offset = self.aligner.offset
        return None if offset is None else int(offset)

    def video(self, pts: int, time_base: Fraction) -> int:
        ms = round(pts * time_base * 1000)
        if self.video_base is None:
            self.video_base, self.video_time_base = ms, time_base
        self.last_video = max(self.last_video, ms - self.video_base)
        return self.last_video

    def align_audio(self, audio_ms: int, live_video_pts: int) -> bool:
        """Put the stream's audio clock on this timeline, once (`AudioAligner`): the audio
        frame at ``audio_ms`` came in with the stream's latest video frame at
        ``live_video_pts``. False until video has started: there is nothing to align with
        yet."""
        if self.video_base is None or self.video_time_base is None:
            return False
        live_ms = round(live_video_pts * self.video_time_base * 1000) - self.video_base
        self.aligner.align(Fraction(audio_ms), Fraction(live_ms))
        return True

    def audio(self, audio_ms: int) -> int:
        """The timestamp of audio at ``audio_ms`` on the stream's audio clock (after `align_audio`)."""
        self.last_audio = max(self.last_audio, int(self.aligner.place(Fraction(audio_ms))))
        return self.last_audio


class RtmpRepublish:
    """One stream republished to one RTMP URL until the stream ends or `stop`."""

    def __init__(
        self,
        stream_registry: StreamRegistry,
        name: str,
        url: str,
        *,
        reconnect: tuple[float, float] = (1.0, 30.0),
        timeout: float = 10.0,
        queue_frames: int = QUEUE_FRAMES,
        max_refusals: int = MAX_REFUSALS,
    ) -> None:
        """Raises ValueError for a URL that is not ``rtmp[s]://host[:port]/app[/streamkey]``
        (without a stream key, the stream's name is published)."""
        if not 0 < reconnect[0] <= reconnect[1]:
            raise ValueError("reconnect must be (first delay, longest delay), both positive")
        self.registry = stream_registry
        self.name = name
        self.url = url
        self.target: RtmpUrl = parse_rtmp_url(url, default_name=name)
        self.id = str(uuid.uuid4())  # the mediaSessionId of the REST API
        self.reconnect = reconnect
        self.timeout = timeout
        self.queue_frames = queue_frames
        self.max_refusals = max_refusals
        self.status = RepublishStatus.CONNECTING
        self.connections = 0  # publishes the far end accepted
        self.frames = 0  # access units sent
        self.audio_frames = 0  # AAC frames sent
        self.audio_failures = 0  # audio frames the transcoder could not take
        self._dropped = 0  # by the subscriptions of earlier connections
        self._subscription: Subscription | None = None
        self.last_error: str | None = None
        self.done = asyncio.Event()  # stopped, failed, or the stream ended
        self.stream: Stream | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._log = log.bind(stream=name, url=self.target.redacted)

    @property
    def dropped(self) -> int:
        """Frames skipped for a slow far end (and while waiting for a keyframe to start at)."""
        current = self._subscription.video.dropped if self._subscription is not None else 0
        return self._dropped + current

    @property
    def rtmp_url(self) -> str:
        return self.target.redacted

    def describe(self) -> dict[str, Any]:
        """The REST API's entry (WCS ``push/find_all``), without the stream key."""
        return {
            "mediaSessionId": self.id,
            "streamName": self.name,
            "rtmpUrl": self.rtmp_url,
            "status": str(self.status),
            "connections": self.connections,
            "frames": self.frames,
            "audioFrames": self.audio_frames,
            "dropped": self.dropped,
            "lastError": self.last_error,
        }

    async def start(self) -> None:
        """Start publishing. Raises StreamNotLive if the stream is not playable now."""
        if self._task is not None:
            return
        stream = self.registry.get(self.name)
        if stream is None:
            raise StreamNotLive(f"stream {self.name!r} is not live")
        self.stream = stream
        self._task = asyncio.create_task(self._run(stream), name=f"rtmp-republish {self.name}")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        # Cancel until it is done: Python 3.11's wait_for can swallow a cancellation that
        # arrives as the awaited operation completes (gh-86296); the flag ends the loop then.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        if self.status is not RepublishStatus.FAILED:
            self.status = RepublishStatus.STOPPED
        self.done.set()

    # --- the connection loop ----------------------------------------------------------------

    async def _run(self, stream: Stream) -> None:
        delays = ReconnectDelay(*self.reconnect)
        refusals = 0
        try:
            while not stream.ended and not self._stopping:
                published = self.connections
                try:
                    if await self._session(stream):
                        self._log.info("rtmp_republish_stream_ended", frames=self.frames)
                        break
                    reason = "closed by the far end"
                except RepublishRefused as exc:
                    refusals += 1
                    reason = str(exc)
                except (RtmpError, OSError, TimeoutError) as exc:  # ConnectionError is an OSError
                    reason = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # a bug must not end the republish silently: say so, retry
                    self._log.exception("rtmp_republish_crashed")
                    reason = f"{type(exc).__name__}: {exc}"
                self.last_error = reason[:300]
                if self.connections > published:
                    delays.reset()  # it worked for a while: retry soon
                    refusals = 0
                if refusals >= self.max_refusals:
                    self.status = RepublishStatus.FAILED
                    self._log.warning("rtmp_republish_failed", reason=self.last_error, refusals=refusals)
                    return
                self.status = RepublishStatus.RECONNECTING
                delay = delays.next()
                self._log.info("rtmp_republish_disconnected", reason=self.last_error, retry_in=delay)
                await self._pause(stream, delay)
            self.status = RepublishStatus.STOPPED
        finally:
            self.done.set()

    async def _pause(self, stream: Stream, delay: float) -> None:
        """Sleep ``delay`` seconds, less if the stream ends meanwhile (nothing is subscribed
        between connections, so look)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while not stream.ended and not self._stopping and (left := until - loop.time()) > 0:
            await asyncio.sleep(min(left, 0.25))

    async def _session(self, stream: Stream) -> bool:
        """One connection: True when it ended because the stream did."""
        target = self.target
        self._log.info("rtmp_republish_connecting", host=target.host, port=target.port, tls=target.tls)
        tls = ssl.create_default_context() if target.tls else None
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port, ssl=tls)
        writer.transport.set_write_buffer_limits(high=WRITE_BUFFER)
        client = RtmpClientConnection.for_url(target)
        subscription: Subscription | None = None
        try:
            writer.write(client.data_to_send())
            await self._until_publishing(client, reader, writer)
            self.connections += 1
            self.status = RepublishStatus.PUBLISHING
            self._log.info("rtmp_republishing", connection=self.connections)
            subscription = self._subscription = stream.subscribe(self, self.queue_frames)
            inbound = asyncio.create_task(self._inbound(client, reader, writer))
            outbound = asyncio.create_task(self._outbound(client, subscription, writer, stream))
            try:
                done, _ = await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (inbound, outbound):
                    task.cancel()
                await asyncio.gather(inbound, outbound, return_exceptions=True)
            if inbound in done:  # the far end's word first: the outbound side may have failed for it
                inbound.result()  # a refusal
                raise ConnectionError("closed by the far end")
            outbound.result()  # why the far end could not be written to
            return True  # the queue closed: the stream ended
        finally:
            if subscription is not None:
                stream.unsubscribe(subscription)
                self._dropped += subscription.video.dropped
                self._subscription = None
            if client.publishing and not writer.is_closing():
                client.close()  # polite, best effort: FCUnpublish, deleteStream
                with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                    writer.write(client.data_to_send())
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError, ssl.SSLError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _until_publishing(
        self, client: RtmpClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Handshake, connect, createStream and publish, all within one timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while not client.publishing:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"the publish was not accepted within {self.timeout:g} s")
            try:
                async with asyncio.timeout(left):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                continue  # reported above
            events = client.receive_data(data)
            out = client.data_to_send()
            if out:
                writer.write(out)
                async with asyncio.timeout(self.timeout):
                    await writer.drain()
            for event in events:
                if isinstance(event, Refused):
                    raise RepublishRefused(str(event))
                if isinstance(event, ConnectionClosed):
                    raise ConnectionError("the far end closed the connection before the publish started")

    async def _inbound(
        self, client: RtmpClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """What the far end says while we publish (acknowledgements, pings, a late refusal).
        Returns at the end of its stream."""
        while True:
            data = await reader.read(READ_SIZE)
            events = client.receive_data(data)
            out = client.data_to_send()
            if out and not writer.is_closing():
                writer.write(out)  # small replies: the outbound side drains
            for event in events:
                if isinstance(event, Refused):
                    raise RepublishRefused(str(event))
                if isinstance(event, ConnectionClosed):
                    return

    async def _outbound(
        self,
        client: RtmpClientConnection,
        subscription: Subscription,
        writer: asyncio.StreamWriter,
        stream: Stream,
    ) -> None:
        """The stream's video, and its audio as AAC, as FLV tags. Returns when the stream ends."""
        audio = stream.audio_codec is not None and aac_transcodable(stream.audio_codec.name)
        client.send_metadata(self._metadata(stream, audio=audio))
        timeline = Timeline()
        # One task a kind, each sending as its frames come: live frames come in time order,
        # so the tags go out interleaved, and neither kind waits for the other.
        pumps = {
            asyncio.create_task(self._video_out(client, subscription.video, writer, timeline)),
            asyncio.create_task(
                self._audio_out(client, subscription.audio, writer, stream, timeline, announced=audio)
            ),
        }
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        for pump in done:
            pump.result()  # why the far end could not be written to

    def _metadata(self, stream: Stream, *, audio: bool) -> dict[str, Any]:
        metadata: dict[str, Any] = {"videocodecid": AVC_CODEC_ID, "encoder": "skyrelay"}
        if stream.width and stream.height:
            metadata.update(width=stream.width, height=stream.height)
        if audio:
            metadata.update(
                audiocodecid=AAC_SOUND_FORMAT,
                audiosamplerate=AAC_RATE,
                audiosamplesize=16,
                audiochannels=ToAac.channels,
                stereo=ToAac.channels == 2,
                audiodatarate=AAC_BIT_RATE // 1000,
            )
        return metadata

    async def _video_out(
        self,
        client: RtmpClientConnection,
        queue: FrameQueue,
        writer: asyncio.StreamWriter,
        timeline: Timeline,
    ) -> None:
        muxer = AvcTagWriter()
        while (frame := await queue.get()) is not None:
            if frame.codec != "H264":
                continue
            tags = muxer.write(frame.data)
            if not tags:
                continue  # no SPS/PPS yet: the far end could not decode it
            timestamp = timeline.video(frame.pts, frame.time_base)
            for tag in tags:
                client.send_video(timestamp, tag)
            writer.write(client.data_to_send())
            self.frames += 1
            await self._drain(writer)

    async def _audio_out(
        self,
        client: RtmpClientConnection,
        queue: FrameQueue,
        writer: asyncio.StreamWriter,
        stream: Stream,
        timeline: Timeline,
        *,
        announced: bool,
    ) -> None:
        """Audio frames transcoded to AAC (none at all for a stream without audio). A frame
        the transcoder fails on is skipped: the video goes on."""
        transcoder: ToAac | None = None
        muxer = AacTagWriter()
        failing = False
        while (frame := await queue.get()) is not None:
            if not timeline.align_audio(round(frame.pts * frame.time_base * 1000), stream.last_video_pts):
                continue
            try:
                transcoder = transcoder or ToAac()
                packets = transcoder.transcode(frame.codec, frame.data, frame.pts, frame.time_base)
                tags = [
                    (timeline.audio(round(Fraction(pts * 1000, AAC_RATE))), tag)
                    for data, pts in packets
                    for tag in muxer.write(transcoder.audio_specific_config, data)
                ]
            except Exception as exc:  # whatever it is, it costs this frame's audio, not the video
                self.audio_failures += 1
                if not failing:  # one event for a run of failures, not one a frame
                    self._log.warning(
                        "rtmp_republish_audio_failed",
                        codec=frame.codec,
                        error=f"{type(exc).__name__}: {exc}"[:300],
                        failures=self.audio_failures,
                    )
                failing = True
                continue
            failing = False
            if not tags:
                continue  # the encoder is still filling its first frame
            if not announced:  # audio that came after the publish started: tell the far end
                client.send_metadata(self._metadata(stream, audio=True))
                announced = True
            for timestamp, tag in tags:
                client.send_audio(timestamp, tag)
            self.audio_frames += len(packets)
            writer.write(client.data_to_send())
            await self._drain(writer)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await writer.drain()
        except TimeoutError:
            raise ConnectionError(f"the far end took nothing for {self.timeout:g} s") from None

    # StreamListener
    def on_video_format(self, width: int, height: int) -> None:
        """A new size comes with new SPS/PPS, which the tag writer sends on its own."""

    def on_stream_event(self, event_type: str, payload: Any) -> None:
        """RTMP carries no stream events."""

    def on_stream_end(self, info: str | None) -> None:
        """The queue is closed: the outbound side returns and the republish stops."""


class RtmpRepublishes:
    """The republishes of the REST API (``push/startup|find_all|terminate``), by id. One
    that finished because its stream ended leaves the list; a failed one stays, with its
    last error, until terminated."""

    def __init__(
        self,
        stream_registry: StreamRegistry,
        *,
        reconnect: tuple[float, float] = (1.0, 30.0),
        timeout: float = 10.0,
    ) -> None:
        self.registry = stream_registry
        self.reconnect = reconnect
        self.timeout = timeout
        self.republishes: dict[str, RtmpRepublish] = {}
        self._watchers = TaskSet("rtmp_republishes")

    async def startup(self, name: str, url: str) -> RtmpRepublish:
        """Republish stream ``name`` to ``url``. Raises ValueError for a bad URL or a stream
        RTMP cannot carry, StreamNotLive for a stream that is not live. The same name and
        URL again return the running republish."""
        republish = RtmpRepublish(
            self.registry, name, url, reconnect=self.reconnect, timeout=self.timeout
        )  # ValueError for the URL first: a bad body is a bad body
        stream = self.registry.get(name)
        if stream is None:
            raise StreamNotLive(f"stream {name!r} is not live")
        codec = stream.video_codec.name if stream.video_codec is not None else None
        if codec != "H264":
            raise ValueError(f"stream {name!r} has {codec or 'no'} video; RTMP republishing carries H.264")
        for existing in self.republishes.values():
            if existing.name == name and existing.url == url and not existing.done.is_set():
                return existing
        await republish.start()
        self.republishes[republish.id] = republish
        self._watchers.spawn(self._forget_when_stream_ends(republish))
        log.info("rtmp_republish_started", stream=name, url=republish.rtmp_url, id=republish.id)
        return republish

    def find(self, media_session_id: str) -> RtmpRepublish | None:
        return self.republishes.get(media_session_id)

    def find_all(self) -> list[dict[str, Any]]:
        return [republish.describe() for republish in self.republishes.values()]

    async def terminate(self, media_session_id: str) -> bool:
        republish = self.republishes.pop(media_session_id, None)
        if republish is None:
            return False
        await republish.stop()
        log.info("rtmp_republish_terminated", stream=republish.name, id=media_session_id)
        return True

    async def stop_all(self) -> None:
        republishes, self.republishes = list(self.republishes.values()), {}
        for republish in republishes:
            await republish.stop()
        await self._watchers.cancel()

    async def _forget_when_stream_ends(self, republish: RtmpRepublish) -> None:
        await republish.done.wait()
        if republish.status is RepublishStatus.STOPPED:
            self.republishes.pop(republish.id, None)
