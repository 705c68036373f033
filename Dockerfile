FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
# The demo page (gateway/static/) is package data: installed with the package.
COPY gateway ./gateway
RUN pip install --no-cache-dir .
# The fan-out floor's C burst (gateway/media/webrtc/burst.c), built while the image has a
# compiler, which goes again in the same layer: the gateway finds the object in
# SKYRELAY_NATIVE_DIR (without it the floor runs in Python; the start log says which).
ENV SKYRELAY_NATIVE_DIR=/opt/skyrelay/native
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python -m gateway.media.webrtc.native \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV SKYRELAY_DEVICE_STATE_FILE=/var/lib/skyrelay/devices.json \
    SKYRELAY_RECORDINGS_DIR=/var/lib/skyrelay/recordings
# What outlives the container: the DJI devices learned and the recordings.
VOLUME /var/lib/skyrelay

# WebSocket API, HTTP, RTMP ingest, RTSP, and WebRTC: one UDP and one ICE-TCP port per worker,
# 8189 up (one worker per usable core: `--cpus 2` gives 8189-8190). Publish them with -p (same
# numbers), or fix the count with SKYRELAY_WORKERS, and announce the host's address with --public-ip.
EXPOSE 8080 8081 1935 8554 8189/udp 8189/tcp
ENTRYPOINT ["skyrelay"]
CMD ["serve"]
