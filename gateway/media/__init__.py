"""Streams of encoded media: the registry, the fan-out hub, sources and sinks."""
