"""Servers: listeners whose connections both play and publish streams (RTSP)."""
