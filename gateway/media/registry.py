"""The stream registry: the one place where sources and sinks meet, by stream name."""

from __future__ import annotations

from gateway.log import get_logger
from gateway.media.stream import Stream

log = get_logger(__name__)


class StreamNameInUse(Exception):
    pass


class StreamRegistry:
    def __init__(self, *, keyframe_interval: float = 1.0) -> None:
        self._streams: dict[str, Stream] = {}
        self._keyframe_interval = keyframe_interval

    def claim(self, name: str) -> Stream:
        """Reserve ``name`` for a new source. Raises StreamNameInUse if it is taken."""
        if name in self._streams:
            raise StreamNameInUse(name)
        stream = Stream(name, keyframe_interval=self._keyframe_interval)
        self._streams[name] = stream
        log.info("stream_claimed", stream=name)
        return stream

    def get(self, name: str) -> Stream | None:
        """The stream of that name if it can be played: codecs negotiated, media arriving."""
        stream = self._streams.get(name)
        playable = stream is not None and stream.ready and stream.live and not stream.ended
        return stream if playable else None

    def release(self, stream: Stream) -> None:
        """The source of ``stream`` is gone: end it and free its name."""
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
            log.info("stream_released", stream=stream.name, viewers=len(stream.subscriptions))
        stream.end()

    def __len__(self) -> int:
        return len(self._streams)

    def streams(self) -> list[Stream]:
        return list(self._streams.values())
