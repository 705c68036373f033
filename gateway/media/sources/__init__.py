"""Sources: where encoded frames come from (WebRTC publishers; RTMP, RTSP, WHIP later)."""
