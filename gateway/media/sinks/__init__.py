"""Sinks: where encoded frames go (WebRTC viewers; HLS, RTSP, DVR later)."""
