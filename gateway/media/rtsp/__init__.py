"""RTSP/1.0 (RFC 2326) with RTP interleaved on the RTSP connection or over UDP, sans I/O: the
message codec, Basic/Digest authentication, SDP, RTP H.264 (RFC 6184) depacketizing, what a
publisher (ANNOUNCE/RECORD) sends, and the client and server state machines. Nothing here
opens a socket or touches asyncio."""
