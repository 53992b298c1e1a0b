// The echo test page: camera + microphone to the server's "echotest" app and back.
//
// Query parameters: ws= (signaling URL, default ws(s)://<host>/ws), ice= (JSON list of
// RTCIceServer, default [] -- never a public STUN server), policy=relay, autostart=1.
// Tests read window.sfuDemo ({state, pc, stats(), ...}) and <body data-state>.

import { Signaling } from "./signaling.js";
import { $, PeerPage } from "./ui.js";

const STATS_INTERVAL_MS = 1000;
const MIN_RATE_WINDOW_MS = 500;
const DETACH_WAIT_MS = 1000;


/** Page options from the query string. */
function readOptions(search) {
  const params = new URLSearchParams(search);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const options = {
    ws: params.get("ws") || `${scheme}://${location.host}/ws`,
    iceServers: [],
    policy: params.get("policy") === "relay" ? "relay" : "all",
    autostart: params.get("autostart") === "1",
    // flow=server: the server offers ({"offer": true}) and the page answers
    serverOffers: params.get("flow") === "server",
    error: null,
  };
  const ice = params.get("ice");
  if (ice) {
    try {
      const parsed = JSON.parse(ice);
      if (!Array.isArray(parsed)) throw new Error("not a JSON list");
      options.iceServers = parsed;
    } catch (err) {
      options.error = `ignoring ice= (${err.message})`;
    }
  }
  return options;
}

/** "candidate:1 1 udp 2122260223 10.0.0.2 40000 typ host ..." -> "host udp 10.0.0.2:40000". */
function describeCandidate(line) {
  const f = line.replace(/^a=/, "").split(" ");
  if (f.length < 8) return line;
  const tcp = f.indexOf("tcptype");
  const tcptype = tcp > 0 ? ` ${f[tcp + 1]}` : "";
  return `${f[7]} ${f[2].toLowerCase()}${tcptype} ${f[4]}:${f[5]}`;
}

function describeStatsCandidate(c) {
  if (!c) return null;
  return {
    type: c.candidateType,
    protocol: c.protocol,
    address: c.address ?? c.ip ?? null,
    port: c.port,
    relayProtocol: c.relayProtocol ?? null,
  };
}


class EchoTest extends PeerPage {
  constructor(options) {
    super();
    this.options = options;
    this.state = "idle";
    this.generation = 0;
    this.log = [];
    this.samples = new Map();
    this.reset();
  }

  reset() {
    this.pc = null;
    this.signaling = null;
    this.handle = null;
    this.stream = null;
    this.localCandidates = [];
    this.remoteCandidates = [];
    this.localGatheringDone = false;
    this.remoteCandidatesDone = false;
    this.pendingLocal = [];
    this.pendingRemote = [];
    this.offerAcked = false;
    this.remoteApplied = false;
    this.serverIce = null;
    this.webrtcup = false;
    this.error = null;
    this.samples.clear();
  }

  setState(state) {
    this.state = state;
    document.body.dataset.state = state;
    $("status").textContent = state;
    const running = !["idle", "stopped", "failed", "error", "hangup"].includes(state);
    $("start").disabled = running;
    $("stop").disabled = !running;
  }

  async start() {
    if (!["idle", "stopped", "failed", "error", "hangup"].includes(this.state)) return;
    const run = ++this.generation;
    const live = () => run === this.generation;
    this.teardown();
    this.reset();
    this.clearViews();
    this.setState("starting");
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      if (!live()) return this.releaseStream();
      $("local-video").srcObject = this.stream;

      const signaling = await Signaling.connect(this.options.ws);
      if (!live()) return signaling.close();
      this.signaling = signaling;
      signaling.addEventListener("frame", (e) => this.addLog(e.detail.dir, e.detail.frame));
      signaling.addEventListener("close", () => {
        if (live() && !["stopped", "error", "failed"].includes(this.state)) {
          this.fail(new Error("signaling connection closed"));
        }
      });

      this.handle = await signaling.attach("echotest");
      if (!live()) return;
      $("handle").textContent = String(this.handle.id);
      this.bindHandle(this.handle, live);
      this.enableEchoControls(true);

      const pc = new RTCPeerConnection({
        iceServers: this.options.iceServers,
        iceTransportPolicy: this.options.policy,
        bundlePolicy: "max-bundle",
      });
      this.pc = pc;
      this.bindPeerConnection(pc, live);
      for (const track of this.stream.getTracks()) pc.addTrack(track, this.stream);

      this.setState("negotiating");
      if (this.options.serverOffers) {
        // the server offers (ICE controlling, DTLS actpass, candidates trickled after its first
        // check); our candidates wait until the answer is acknowledged
        const offer = await this.handle.message({ offer: true });
        if (!live()) return;
        await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
        this.remoteApplied = true;
        for (const candidate of this.pendingRemote.splice(0)) await this.applyRemote(candidate);
        await pc.setLocalDescription(await pc.createAnswer());
        await this.handle.answer(pc.localDescription.sdp);
        if (!live()) return;
        this.offerAcked = true;
        for (const candidate of this.pendingLocal.splice(0)) this.sendCandidate(candidate);
        this.startStatsLoop(live);
        return;
      }
      await pc.setLocalDescription(await pc.createOffer());
      const answer = await this.handle.offer(pc.localDescription.sdp);
      if (!live()) return;
      this.offerAcked = true;
      for (const candidate of this.pendingLocal.splice(0)) this.sendCandidate(candidate);

      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      if (!live()) return;
      this.remoteApplied = true;
      for (const candidate of this.pendingRemote.splice(0)) await this.applyRemote(candidate);
      this.startStatsLoop(live);
    } catch (err) {
      if (live()) this.fail(err);
    }
  }

  bindHandle(handle, live) {
    handle.addEventListener("candidate", async (e) => {
      if (!live()) return;
      const candidate = e.detail.candidate ?? null;
      const text = candidate?.candidate;
      this.remoteCandidates.push(text || null);
      if (!text) this.remoteCandidatesDone = true;
      this.appendCandidate("remote-candidates", text);
      if (this.remoteApplied) {
        await this.applyRemote(candidate);
      } else {
        this.pendingRemote.push(candidate);
      }
    });
    handle.addEventListener("ice", (e) => {
      this.serverIce = e.detail.state;
      $("server-ice").textContent = e.detail.state + (e.detail.reason ? ` (${e.detail.reason})` : "");
    });
    handle.addEventListener("webrtcup", () => {
      this.webrtcup = true;
      $("webrtcup").textContent = "yes";
    });
    handle.addEventListener("app", (e) => {
      $("echo-result").textContent = JSON.stringify(e.detail.data);
    });
    handle.addEventListener("hangup", (e) => {
      if (!live()) return;
      this.note(`server hung up: ${e.detail.reason ?? "no reason"}`);
      this.closePeer();
      this.setState("hangup");
    });
  }

  bindPeerConnection(pc, live) {
    pc.addEventListener("icecandidate", (e) => {
      if (!live()) return;
      const candidate = e.candidate && e.candidate.candidate ? e.candidate : null;
      this.localCandidates.push(candidate ? candidate.candidate : null);
      if (!candidate) this.localGatheringDone = true;
      this.appendCandidate("local-candidates", candidate?.candidate);
      if (this.offerAcked) {
        this.sendCandidate(candidate);
      } else {
        this.pendingLocal.push(candidate);
      }
    });
    pc.addEventListener("track", (e) => {
      const video = $("remote-video");
      const stream = e.streams[0] ?? video.srcObject ?? new MediaStream();
      if (!e.streams[0]) stream.addTrack(e.track);
      video.srcObject = stream;
    });
    pc.addEventListener("iceconnectionstatechange", () => {
      $("ice-state").textContent = pc.iceConnectionState;
    });
    this.followConnectionState(pc, live);
  }

  appendCandidate(listId, text) {
    const li = document.createElement("li");
    li.textContent = text ? describeCandidate(text) : "end-of-candidates";
    if (text) li.title = text;
    $(listId).append(li);
  }

  startStatsLoop(live) {
    const tick = async () => {
      if (!live() || !this.pc) return;
      try {
        this.render(await this.stats());
      } catch (err) {
        this.note(`getStats failed: ${err.message}`);
      }
      if (live() && this.pc) this.statsTimer = setTimeout(tick, STATS_INTERVAL_MS);
    };
    tick();
  }

  /** Everything a test needs, from getStats and the page's own bookkeeping. */
  async stats() {
    const pc = this.pc;
    const out = {
      state: this.state,
      error: this.error,
      handle: this.handle?.id ?? null,
      iceConnectionState: pc?.iceConnectionState ?? null,
      connectionState: pc?.connectionState ?? null,
      iceGatheringState: pc?.iceGatheringState ?? null,
      signalingState: pc?.signalingState ?? null,
      serverIce: this.serverIce,
      webrtcup: this.webrtcup,
      localCandidates: [...this.localCandidates],
      remoteCandidates: [...this.remoteCandidates],
      localGatheringDone: this.localGatheringDone,
      remoteCandidatesDone: this.remoteCandidatesDone,
      selectedPair: null,
      inbound: {},
      outbound: {},
    };
    if (!pc || pc.signalingState === "closed") return out;
    const report = await pc.getStats();
    out.selectedPair = this.selectedPair(report);
    for (const s of report.values()) {
      if (s.type === "inbound-rtp" && !out.inbound[s.kind]) {
        out.inbound[s.kind] = {
          packetsReceived: s.packetsReceived ?? 0,
          packetsLost: s.packetsLost ?? 0,
          bytesReceived: s.bytesReceived ?? 0,
          framesDecoded: s.framesDecoded ?? 0,
          framesReceived: s.framesReceived ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          jitter: s.jitter ?? null,
          bitrate: this.rate(s.id, s.bytesReceived ?? 0, s.timestamp),
        };
      } else if (s.type === "outbound-rtp" && !out.outbound[s.kind]) {
        out.outbound[s.kind] = {
          packetsSent: s.packetsSent ?? 0,
          bytesSent: s.bytesSent ?? 0,
          framesEncoded: s.framesEncoded ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          qualityLimitationReason: s.qualityLimitationReason ?? null,
          bitrate: this.rate(s.id, s.bytesSent ?? 0, s.timestamp),
        };
      }
    }
    return out;
  }

  selectedPair(report) {
    let pair = null;
    for (const s of report.values()) {
      if (s.type === "transport" && s.selectedCandidatePairId) {
        pair = report.get(s.selectedCandidatePairId) ?? null;
        break;
      }
    }
    if (!pair) {
      for (const s of report.values()) {
        if (s.type === "candidate-pair" && (s.selected || (s.nominated && s.state === "succeeded"))) {
          pair = s;
          break;
        }
      }
    }
    if (!pair) return null;
    return {
      id: pair.id,
      state: pair.state,
      nominated: pair.nominated ?? false,
      currentRoundTripTime: pair.currentRoundTripTime ?? null,
      bytesSent: pair.bytesSent ?? 0,
      bytesReceived: pair.bytesReceived ?? 0,
      local: describeStatsCandidate(report.get(pair.localCandidateId)),
      remote: describeStatsCandidate(report.get(pair.remoteCandidateId)),
    };
  }

  /** bits/s of a byte counter since its previous sample (kept at least 500 ms apart). */
  rate(id, bytes, timestamp) {
    const prev = this.samples.get(id);
    if (!prev) {
      this.samples.set(id, { bytes, timestamp, bitrate: 0 });
      return 0;
    }
    if (timestamp - prev.timestamp < MIN_RATE_WINDOW_MS) return prev.bitrate;
    const bitrate = Math.round(((bytes - prev.bytes) * 8 * 1000) / (timestamp - prev.timestamp));
    this.samples.set(id, { bytes, timestamp, bitrate });
    return bitrate;
  }

  render(s) {
    const p = s.selectedPair;
    $("pair").textContent = p
      ? `${p.local?.type} ${p.local?.protocol} ${p.local?.address}:${p.local?.port} \u2194 ` +
        `${p.remote?.type} ${p.remote?.address}:${p.remote?.port} (${p.state})`
      : "-";
    $("rtt").textContent =
      p?.currentRoundTripTime != null ? `${(p.currentRoundTripTime * 1000).toFixed(1)} ms` : "-";
    const video = s.inbound.video;
    $("frames").textContent = video ? String(video.framesDecoded) : "-";
    $("resolution").textContent = video?.frameWidth ? `${video.frameWidth}x${video.frameHeight}` : "-";
    const kbps = (dir) =>
      Object.values(s[dir]).reduce((sum, st) => sum + (st.bitrate ?? 0), 0) / 1000;
    $("bitrate").textContent = `${kbps("inbound").toFixed(0)} / ${kbps("outbound").toFixed(0)} kbit/s`;
  }

  async sendEcho(body) {
    if (!this.handle) return null;
    try {
      const reply = await this.handle.message(body);
      $("echo-result").textContent = JSON.stringify(reply);
      return reply;
    } catch (err) {
      $("echo-result").textContent = err.message;
      this.note(`echo request failed: ${err.message}`);
      throw err;
    }
  }

  enableEchoControls(enabled) {
    for (const id of ["echo-audio", "echo-video", "echo-bitrate"]) $(id).disabled = !enabled;
  }

  fail(err) {
    this.error = err?.message ?? String(err);
    $("error").textContent = this.error;
    this.note(`error: ${this.error}`);
    console.error("echo test:", this.error);
    this.teardown();
    this.setState("error");
  }

  closePeer() {
    clearTimeout(this.statsTimer);
    if (this.pc) this.pc.close();
    this.enableEchoControls(false);
  }

  releaseStream() {
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
  }

  /** Closes the peer and the camera now; resolves once detached and disconnected (<= 1 s). */
  teardown() {
    this.closePeer();
    this.releaseStream();
    const { handle, signaling } = this;
    if (!signaling || signaling.closed) return Promise.resolve();
    const detach = handle ? handle.detach().catch(() => {}) : Promise.resolve();
    const bounded = Promise.race([detach, new Promise((r) => setTimeout(r, DETACH_WAIT_MS))]);
    return bounded.finally(() => signaling.close());
  }

  clearViews() {
    for (const id of ["local-candidates", "remote-candidates"]) $(id).replaceChildren();
    for (const id of ["handle", "ice-state", "server-ice", "conn-state", "webrtcup", "pair", "rtt"]) {
      $(id).textContent = "-";
    }
    for (const id of ["frames", "resolution", "bitrate"]) $(id).textContent = "-";
    $("error").textContent = "";
    $("echo-result").textContent = "-";
    $("local-video").srcObject = null;
    $("remote-video").srcObject = null;
  }

  /** Stops everything: closes the peer connection, detaches, closes the WebSocket. */
  stop() {
    if (["idle", "stopped"].includes(this.state)) return Promise.resolve();
    this.generation++;
    const done = this.teardown();
    this.setState("stopped");
    return done;
  }
}

const options = readOptions(location.search);
const demo = new EchoTest(options);

window.sfuDemo = {
  get state() {
    return demo.state;
  },
  get pc() {
    return demo.pc;
  },
  get handle() {
    return demo.handle?.id ?? null;
  },
  get log() {
    return demo.log;
  },
  options,
  stats: () => demo.stats(),
  start: () => demo.start(),
  stop: () => demo.stop(),
  setAudio: (on) => demo.sendEcho({ audio: Boolean(on) }),
  setVideo: (on) => demo.sendEcho({ video: Boolean(on) }),
  setBitrate: (bps) => demo.sendEcho({ bitrate: Number(bps) }),
};

$("start").addEventListener("click", () => demo.start());
$("stop").addEventListener("click", () => demo.stop());
$("clear-log").addEventListener("click", () => $("log").replaceChildren());
$("echo-audio").addEventListener("change", (e) => {
  demo.sendEcho({ audio: e.target.checked }).catch(() => {});
});
$("echo-video").addEventListener("change", (e) => {
  demo.sendEcho({ video: e.target.checked }).catch(() => {});
});
$("echo-bitrate").addEventListener("change", (e) => {
  demo.sendEcho({ bitrate: Number(e.target.value) }).catch(() => {});
});
window.addEventListener("pagehide", () => demo.stop());

if (options.error) demo.note(options.error);
demo.setState("idle");
if (options.autostart) demo.start();
