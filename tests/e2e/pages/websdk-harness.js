// Test harness around the unmodified Flashphoner WebSDK. Python drives it with
// page.evaluate("e2e.connect(url)") etc. and polls window.e2e.state.
"use strict";

(function () {
    const SESSION_STATUS = Flashphoner.constants.SESSION_STATUS;
    const STREAM_STATUS = Flashphoner.constants.STREAM_STATUS;
    const TERMINAL = [STREAM_STATUS.FAILED, STREAM_STATUS.STOPPED, STREAM_STATUS.UNPUBLISHED];
    const state = { session: "NONE", sessionInfo: "", streams: {} };
    const streams = {};
    let session = null;

    Flashphoner.init({});

    function connect(urlServer) {
        session = Flashphoner.createSession({ urlServer: urlServer });
        for (const status of Object.values(SESSION_STATUS)) {
            session.on(status, function (s, obj) {
                state.session = status;
                state.sessionInfo = s && s.getInfo ? String(s.getInfo() || "") : "";
            });
        }
    }

    // `options` go to session.createStream as they are (e.g. {transport: "TCP"}).
    function start(label, name, kind, options) {
        if (!session || state.session !== SESSION_STATUS.ESTABLISHED) {
            throw new Error("session not ESTABLISHED: " + state.session);
        }
        const display = document.createElement("div");
        display.id = "display-" + label;
        display.className = "display";
        document.getElementById("displays").appendChild(display);
        // `events` lists every callback fired; `status` is stream.status() after it (RESIZE,
        // PLAYBACK_PROBLEM, ... are events with their own callbacks, not statuses).
        // `streamEvents` counts STREAM_EVENT callbacks by type; `telemetry` keeps the last
        // telemetry payloads (rtpTimestamp and the sample's identity, not the whole sample).
        const record = {
            name: name, kind: kind, status: "NEW", info: "", events: [], streamEvents: {}, telemetry: [],
        };
        state.streams[label] = record;
        const stream = session.createStream(Object.assign({}, options || {}, { name: name, display: display }));
        for (const event of Object.values(STREAM_STATUS)) {
            stream.on(event, function (st) {
                record.status = st.status();
                record.info = String(st.getInfo() || "");
                record.events.push(event + (record.info ? " (" + record.info + ")" : ""));
            });
        }
        stream.on(Flashphoner.constants.STREAM_EVENT, function (event) {
            record.streamEvents[event.type] = (record.streamEvents[event.type] || 0) + 1;
            if (event.type !== "telemetry") {
                return;
            }
            const payload = event.payload || {};
            const sample = payload.sample || {};
            record.telemetry.push({
                rtpTimestamp: payload.rtpTimestamp,
                stream: payload.stream,
                sn: sample.sn,
                kind: sample.kind,
                aircraft: sample.aircraft || null,
            });
            if (record.telemetry.length > 200) {
                record.telemetry.shift();
            }
        });
        streams[label] = stream;
        if (kind === "publish") {
            stream.publish();
        } else {
            stream.play();
        }
        return stream.id();
    }

    function stop(label) {
        streams[label].stop();
    }

    function video(label) {
        const el = document.querySelector("#display-" + label + " video");
        if (!el) {
            return null;
        }
        const quality = el.getVideoPlaybackQuality ? el.getVideoPlaybackQuality() : null;
        return {
            width: el.videoWidth,
            height: el.videoHeight,
            time: el.currentTime,
            frames: quality ? quality.totalVideoFrames : 0,
        };
    }

    window.e2e = {
        state: state,
        terminal: TERMINAL,
        connect: connect,
        publish: function (label, name, options) { return start(label, name, "publish", options); },
        play: function (label, name, options) { return start(label, name, "play", options); },
        stop: stop,
        video: video,
    };
})();
