// skyrelay-client.js: a small client for the Flashphoner WCS raw WebSocket API,
// as spoken by skyrelay. No dependencies, no build step (ES module).
//
//   const client = new SkyrelayClient("ws://127.0.0.1:8080");
//   await client.connect();
//   const pub = await client.publish("camera");          // MediaSession
//   const view = await client.play("camera");             // view.mediaStream -> <video>
//   const tcp = await client.play("camera", { transport: "TCP" }); // media over ICE-TCP only
//   view.addEventListener("status", e => console.log(e.detail.status, e.detail.info));
//   view.addEventListener("metrics", e => console.log(e.detail.videoRate));
//   view.addEventListener("telemetry", e => console.log(e.detail.rtpTimestamp, e.detail.sample));
//   const quiet = await client.play("camera", { telemetry: false }); // no telemetry
//   view.stop();
//
// Telemetry (a drone's flight data, see docs/protocol.md) comes on the player's `telemetry`
// data channel, or as notifyStreamEvent type "telemetry"; `TelemetryBuffer` and
// `followFrames` pick, for the frame on screen, the sample stamped at or before it.
//
// Every frame is JSON {"message": NAME, "data": [...]} in both directions.

export const TERMINAL = new Set(["FAILED", "STOPPED", "UNPUBLISHED"]);

// crypto.randomUUID() exists only in secure contexts; playing also works from plain http.
export function uuid() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function parseJson(text) {
    try {
        return JSON.parse(text);
    } catch (err) {
        return null;
    }
}

// --- telemetry timed to the frame on screen ---------------------------------------------

/** Whether RTP timestamp `a` is at or before `b` on a 32-bit clock that wraps (every 13 h
 *  at 90 kHz): the shorter way round decides, as RFC 3550 sequence numbers do. */
export function rtpAtOrBefore(a, b) {
    return rtpDiff(a, b) >= 0;
}

/** Ticks from RTP timestamp `a` forward to `b` (negative if `b` is before `a`), wrap-aware. */
export function rtpDiff(a, b) {
    return (b - a) | 0; // the difference modulo 2**32, as a signed 32-bit number
}

// A sample stamped this far (10 s of 90 kHz) ahead of the frame on screen belongs to an
// earlier RTP timeline (the stream restarted): it would never be reached, so it goes.
const FUTURE_LIMIT = 10 * 90000;

/** The received samples of one player, ordered by rtpTimestamp, and the choice of the one
 *  that goes with a frame: the latest stamped at or before it. */
export class TelemetryBuffer {
    constructor(capacity = 64) {
        this.capacity = capacity;
        this.timed = []; // payloads with an rtpTimestamp, oldest stamp first
        this.newest = null; // the last payload received (timed or not): the fallback
    }

    add(payload) {
        this.newest = payload;
        const stamp = payload.rtpTimestamp;
        if (!Number.isInteger(stamp)) {
            return; // no video sent yet when it arrived: only good as "newest"
        }
        // Samples arrive nearly in order: walk back from the end to the insertion point.
        let i = this.timed.length;
        while (i > 0 && !rtpAtOrBefore(this.timed[i - 1].rtpTimestamp, stamp)) {
            i -= 1;
        }
        this.timed.splice(i, 0, payload);
        if (this.timed.length > this.capacity) {
            this.timed.shift();
        }
    }

    /** The payload for a frame with RTP timestamp `frameRtp` (undefined/null: unknown, the
     *  newest one), or null if every sample is stamped after the frame. Older ones than the
     *  choice are dropped: frames only move forward. */
    pick(frameRtp) {
        if (!Number.isInteger(frameRtp)) {
            return this.newest;
        }
        this.timed = this.timed.filter((p) => rtpDiff(frameRtp, p.rtpTimestamp) <= FUTURE_LIMIT);
        let chosen = -1;
        for (let i = 0; i < this.timed.length && rtpAtOrBefore(this.timed[i].rtpTimestamp, frameRtp); i++) {
            chosen = i;
        }
        if (chosen < 0) {
            // Every stamped sample is after the frame (keep what is shown); none stamped: the
            // newest, unstamped.
            return this.timed.length || !this.newest || Number.isInteger(this.newest.rtpTimestamp)
                ? null
                : this.newest;
        }
        this.timed.splice(0, chosen);
        return this.timed[0];
    }
}

/** Calls `show(payload, frameRtp)` for each frame `video` presents, with the telemetry that
 *  goes with it (`buffer.pick`); frameRtp is undefined where the browser does not tell it.
 *  Without requestVideoFrameCallback, the newest sample about 10 times a second. Returns a
 *  function that stops it. */
export function followFrames(video, buffer, show) {
    let stopped = false;
    if (typeof video.requestVideoFrameCallback !== "function") {
        const timer = setInterval(() => show(buffer.pick(undefined), undefined), 100);
        return () => clearInterval(timer);
    }
    const onFrame = (now, metadata) => {
        if (stopped) {
            return;
        }
        // Chromium gives rtpTimestamp for WebRTC video; other sources lack it.
        const frameRtp = metadata ? metadata.rtpTimestamp : undefined;
        show(buffer.pick(frameRtp), frameRtp);
        video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    return () => {
        stopped = true;
    };
}

/** One publish or play: a peer connection plus the server's view of its status. */
export class MediaSession extends EventTarget {
    constructor(client, name, published, { transport = null, telemetry = true, telemetryRate = null } = {}) {
        super();
        this.client = client;
        this.id = uuid();
        this.name = name;
        this.published = published;
        // "TCP": the server answers with ICE-TCP candidates only (networks that block UDP);
        // null: UDP and TCP both, UDP preferred.
        this.transport = transport;
        // Players: false asks the server for no telemetry; telemetryRate for fewer per second.
        this.telemetry = telemetry;
        this.telemetryRate = telemetryRate;
        this.telemetryChannel = null; // the server's `telemetry` data channel, once it opens one
        this._seen = new Set(); // keys of recent samples: each comes on the channel and the WebSocket
        this._seenOrder = [];
        this.status = "NEW";
        this.info = "";
        this.metrics = null;
        this.pc = new RTCPeerConnection({ iceServers: [] });
        this.mediaStream = new MediaStream(); // local camera (publish) or remote tracks (play)
        this.hasAudio = false;
        this.hasVideo = false;
    }

    get terminal() {
        return TERMINAL.has(this.status);
    }

    /** The stop/unpublish request; the server confirms with STOPPED/UNPUBLISHED. */
    stop() {
        if (this.terminal) {
            return;
        }
        if (this.status !== "NEW") {
            this.client.send(this.published ? "unPublishStream" : "stopStream", {
                mediaSessionId: this.id,
                name: this.name,
                published: this.published,
                hasVideo: true,
                hasAudio: true,
                status: this.status,
                record: false,
            });
        }
        this._release();
        if (this.status === "NEW") {
            this._setStatus("FAILED", "Stopped before start");
        }
    }

    _release() {
        if (this.pc.signalingState !== "closed") {
            this.pc.close();
        }
        if (this.published) {
            this.mediaStream.getTracks().forEach((t) => t.stop());
        }
    }

    _setStatus(status, info) {
        this.status = status;
        this.info = info || "";
        if (this.terminal) {
            this._release();
            this.client.sessions.delete(this.id);
        }
        this.dispatchEvent(new CustomEvent("status", { detail: { status, info: this.info } }));
    }

    /** A telemetry payload {rtpTimestamp, stream, sample} from the data channel or the WebSocket.
     *  The server sends each sample on both (the channel only once open): the first copy wins. */
    _telemetry(payload, via) {
        if (!payload || typeof payload !== "object" || !payload.sample || typeof payload.sample !== "object") {
            return;
        }
        if (via === "websocket" && this.telemetryChannel && this.telemetryChannel.readyState === "open") {
            return; // the channel carries the same samples: take them from there
        }
        const s = payload.sample;
        const key = `${payload.rtpTimestamp}|${s.sn}|${s.receivedAt}|${s.deviceTime}`;
        if (this._seen.has(key)) {
            return;
        }
        this._seen.add(key);
        this._seenOrder.push(key);
        if (this._seenOrder.length > 64) {
            this._seen.delete(this._seenOrder.shift());
        }
        this.dispatchEvent(new CustomEvent("telemetry", { detail: { ...payload, via } }));
    }

    _request(message, sdp) {
        this.status = "PENDING";
        this.client.sessions.set(this.id, this);
        const request = {
            mediaSessionId: this.id,
            name: this.name,
            published: this.published,
            hasVideo: this.hasVideo,
            hasAudio: this.hasAudio,
            status: "PENDING",
            record: false,
            mediaProvider: "WebRTC",
            sdp: sdp,
        };
        if (this.transport) {
            request.transport = this.transport;
        }
        if (!this.published && (!this.telemetry || this.telemetryRate)) {
            request.custom = { telemetry: this.telemetry };
            if (this.telemetryRate) {
                request.custom.telemetryRate = this.telemetryRate;
            }
        }
        this.client.send(message, request);
        this.dispatchEvent(new CustomEvent("status", { detail: { status: "PENDING", info: "" } }));
    }
}

export class SkyrelayClient extends EventTarget {
    constructor(url) {
        super();
        this.url = url;
        this.ws = null;
        this.userData = null;
        this.sessions = new Map(); // mediaSessionId -> MediaSession
    }

    /** Opens the WebSocket, sends `connection`, resolves with getUserData's object. */
    connect({ timeout = 10000 } = {}) {
        return new Promise((resolve, reject) => {
            const ws = new WebSocket(this.url);
            this.ws = ws;
            const timer = setTimeout(() => {
                reject(new Error(`no getUserData from ${this.url} within ${timeout} ms`));
                ws.close();
            }, timeout);
            ws.onopen = () => {
                this.send("connection", {
                    appKey: "defaultApp",
                    mediaProviders: ["WebRTC"],
                    keepAlive: false,
                    clientVersion: "2.0",
                    clientOSVersion: navigator.userAgent,
                    clientBrowserVersion: navigator.userAgent,
                    custom: { client: "skyrelay-client.js" },
                    clientInfo: {},
                });
            };
            ws.onmessage = (event) => {
                const frame = this._parse(event.data);
                if (frame && frame.message === "getUserData" && !this.userData) {
                    clearTimeout(timer);
                    this.userData = frame.data[0] || {};
                    resolve(this.userData);
                }
                if (frame) {
                    this._dispatch(frame.message, frame.data);
                }
            };
            ws.onerror = () => {
                clearTimeout(timer);
                reject(new Error(`cannot connect to ${this.url}`));
            };
            ws.onclose = (event) => {
                clearTimeout(timer);
                for (const session of [...this.sessions.values()]) {
                    session._setStatus("FAILED", "Connection closed");
                }
                this.dispatchEvent(new CustomEvent("close", { detail: { code: event.code } }));
            };
        });
    }

    close() {
        if (this.ws) {
            this.ws.close();
        }
    }

    send(message, obj) {
        this.ws.send(JSON.stringify({ message, data: [obj] }));
    }

    /** Publishes the camera (and microphone if there is one) under `name`.
     *  `options.transport`: "TCP" for WebRTC over TCP only (default: UDP and TCP). */
    async publish(name, options = {}) {
        if (!navigator.mediaDevices) {
            throw new Error("publishing needs a secure context (https:// or http://localhost)");
        }
        let media;
        try {
            media = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
        } catch (err) {
            media = await navigator.mediaDevices.getUserMedia({ video: true });
        }
        const session = new MediaSession(this, name, true, options);
        session.mediaStream = media;
        for (const track of media.getTracks()) {
            session.pc.addTransceiver(track, { direction: "sendonly", streams: [media] });
        }
        session.hasAudio = media.getAudioTracks().length > 0;
        session.hasVideo = media.getVideoTracks().length > 0;
        await this._offer(session, "publishStream");
        return session;
    }

    /** Plays stream `name`; its tracks arrive in `session.mediaStream`, its telemetry as
     *  "telemetry" events. `options.transport` as for publish; `options.telemetry`: false for
     *  none; `options.telemetryRate`: at most this many samples per second. */
    async play(name, options = {}) {
        const session = new MediaSession(this, name, false, options);
        session.pc.addTransceiver("audio", { direction: "recvonly" });
        session.pc.addTransceiver("video", { direction: "recvonly" });
        session.hasAudio = true;
        session.hasVideo = true;
        session.pc.ontrack = (event) => {
            session.mediaStream.addTrack(event.track);
            session.dispatchEvent(new CustomEvent("track", { detail: event.track }));
        };
        if (session.telemetry) {
            // Only so that the offer has an m=application section: the server then opens its
            // own `telemetry` channel (unreliable: a late sample is worth nothing).
            session.pc.createDataChannel("skyrelay");
            session.pc.ondatachannel = (event) => {
                const channel = event.channel;
                if (channel.label !== "telemetry") {
                    return;
                }
                session.telemetryChannel = channel;
                channel.onmessage = (e) => session._telemetry(parseJson(e.data), "datachannel");
            };
        }
        await this._offer(session, "playStream");
        return session;
    }

    async _offer(session, message) {
        // No trickle ICE, like the WebSDK: the server learns our address from its STUN checks.
        const offer = await session.pc.createOffer();
        await session.pc.setLocalDescription(offer);
        session._request(message, offer.sdp);
    }

    _parse(text) {
        try {
            const frame = JSON.parse(text);
            if (frame && typeof frame.message === "string") {
                frame.data = Array.isArray(frame.data) ? frame.data : [];
                return frame;
            }
        } catch (err) {
            // fall through
        }
        console.warn("skyrelay: ignoring malformed frame", text);
        return null;
    }

    _dispatch(message, data) {
        const obj = data[0] || {};
        switch (message) {
            case "ping":
                this.send("pong", null);
                break;
            case "setRemoteSDP": {
                const session = this.sessions.get(data[0]);
                if (session && session.pc.signalingState === "have-local-offer") {
                    session.pc
                        .setRemoteDescription({ type: "answer", sdp: data[1] })
                        .catch((err) => session._setStatus("FAILED", `Bad answer: ${err.message}`));
                }
                break;
            }
            case "notifyStreamStatusEvent": {
                const session = this.sessions.get(obj.mediaSessionId);
                if (session && obj.status) {
                    session._setStatus(obj.status, obj.info);
                }
                break;
            }
            case "fail": {
                const session = this.sessions.get(obj.id);
                if (session && obj.status) {
                    session._setStatus(obj.status, obj.info);
                }
                break;
            }
            case "inboundVideoRate":
            case "outboundVideoRate": {
                const session = this.sessions.get(obj.mediaSessionId);
                if (session) {
                    session.metrics = { direction: message, ...obj };
                    session.dispatchEvent(new CustomEvent("metrics", { detail: session.metrics }));
                }
                break;
            }
            case "notifyStreamEvent": {
                const session = this.sessions.get(obj.mediaSessionId);
                if (session && obj.type === "telemetry") {
                    session._telemetry(obj.payload, "websocket");
                } else if (session) {
                    session.dispatchEvent(new CustomEvent("streamEvent", { detail: obj }));
                }
                break;
            }
            default:
                break;
        }
        this.dispatchEvent(new CustomEvent("message", { detail: { message, data } }));
    }
}
