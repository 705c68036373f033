// Injected before any page script (playwright add_init_script, see Harness.init_scripts).
// Records what the page's WebRTC client did, whichever client it is (the unmodified WebSDK,
// the demo page): every RTCPeerConnection it creates, the remote descriptions it applies,
// and the WCS publishStream/playStream requests it sends. Python reads window.e2eRtc.
"use strict";

(function () {
    const Native = window.RTCPeerConnection;
    if (!Native || window.e2eRtc) {
        return;
    }
    const pcs = [];
    const remoteDescriptions = []; // {pc, type, sdp}, in the order they were applied
    const requests = []; // {message, mediaSessionId, name, transport} of publishStream/playStream
    const localCandidates = []; // {pc, protocol, type, tcpType, port} as gathered

    // A subclass, not a proxy: the WebSDK's webrtc-adapter wraps window.RTCPeerConnection
    // at load time and must find a real constructor with the native prototype chain.
    class Recorded extends Native {
        constructor(...args) {
            super(...args);
            this.e2eIndex = pcs.length;
            pcs.push(this);
            this.addEventListener("icecandidate", (event) => {
                const c = event.candidate;
                if (c && c.candidate) {
                    localCandidates.push({
                        pc: this.e2eIndex,
                        protocol: c.protocol,
                        type: c.type,
                        tcpType: c.tcpType || null,
                        port: c.port,
                    });
                }
            });
        }

        setRemoteDescription(description, ...rest) {
            if (description) {
                remoteDescriptions.push({ pc: this.e2eIndex, type: description.type, sdp: description.sdp });
            }
            return super.setRemoteDescription(description, ...rest);
        }
    }
    window.RTCPeerConnection = Recorded;

    const nativeSend = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
        try {
            const frame = typeof data === "string" ? JSON.parse(data) : null;
            if (frame && (frame.message === "publishStream" || frame.message === "playStream")) {
                const obj = (frame.data && frame.data[0]) || {};
                requests.push({
                    message: frame.message,
                    mediaSessionId: obj.mediaSessionId,
                    name: obj.name,
                    transport: obj.transport === undefined ? null : obj.transport,
                });
            }
        } catch (err) {
            // not JSON: not a WCS frame
        }
        return nativeSend.call(this, data);
    };

    function candidate(stats, id) {
        const c = id && stats.get(id);
        if (!c) {
            return null;
        }
        return {
            protocol: c.protocol,
            candidateType: c.candidateType,
            tcpType: c.tcpType || null,
            address: c.address,
            port: c.port,
        };
    }

    // The pair ICE selected: the transport's selectedCandidatePairId, else a nominated
    // succeeded pair.
    async function describe(pc) {
        const info = {
            index: pc.e2eIndex,
            connectionState: pc.connectionState,
            iceConnectionState: pc.iceConnectionState,
            localProtocols: [],
            selected: null,
        };
        if (pc.connectionState === "closed") {
            return info;
        }
        const stats = await pc.getStats();
        let pair = null;
        stats.forEach((r) => {
            if (r.type === "transport" && r.selectedCandidatePairId && !pair) {
                pair = stats.get(r.selectedCandidatePairId) || null;
            }
        });
        stats.forEach((r) => {
            if (!pair && r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
                pair = r;
            }
            if (r.type === "local-candidate") {
                info.localProtocols.push(r.protocol);
            }
        });
        if (pair) {
            info.selected = {
                state: pair.state,
                local: candidate(stats, pair.localCandidateId),
                remote: candidate(stats, pair.remoteCandidateId),
            };
        }
        return info;
    }

    window.e2eRtc = {
        count: () => pcs.length,
        remoteDescriptions: () => remoteDescriptions.slice(),
        requests: () => requests.slice(),
        localCandidates: () => localCandidates.slice(),
        peerConnections: () => Promise.all(pcs.map(describe)),
    };
})();
