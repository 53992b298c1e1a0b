// The mountpoint watch page: list mountpoints (REST), watch one over the "streaming" app
// (the server offers, the browser answers), switch between compatible ones on the same
// PeerConnection, pause, resume, stop.
//
// Query parameters: ws= (signaling URL), ice= (JSON list of RTCIceServer, default []),
// id= (a mountpoint to watch on load), pin=, autostart=1 (watch id= at once).
// Tests read window.sfuDemo ({state, pc, watching, stats(), watch(id), switchTo(id), ...})
// and <body data-state>.

import { Signaling } from "./signaling.js";
import { $, PeerPage } from "./ui.js";

const STATS_INTERVAL_MS = 1000;
const DETACH_WAIT_MS = 1000;
const API = "/api/mountpoints";


function readOptions(search) {
  const params = new URLSearchParams(search);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const id = Number(params.get("id"));
  const options = {
    ws: params.get("ws") || `${scheme}://${location.host}/ws`,
    iceServers: [],
    id: Number.isInteger(id) && id > 0 ? id : null,
    pin: params.get("pin") || "",
    autostart: params.get("autostart") === "1",
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


/** "VP8 + opus" from a mountpoint's media. */
function describeMedia(media) {
  return (media || []).map((m) => m.codec).join(" + ");
}

/** Same kinds, codecs and fmtp, in order: what the server accepts for a switch. */
function compatible(a, b) {
  if (!a || !b || a.media.length !== b.media.length) return false;
  return a.media.every(
    (m, i) => m.kind === b.media[i].kind && m.codec === b.media[i].codec && m.fmtp === b.media[i].fmtp,
  );
}

class Watcher extends PeerPage {
  constructor(options) {
    super();
    this.options = options;
    this.state = "idle";
    this.generation = 0;
    this.log = [];
    this.mountpoints = [];
    this.samples = new Map();
    this.reset();
  }

  reset() {
    this.pc = null;
    this.signaling = null;
    this.handle = null;
    this.watching = null;
    this.paused = false;
    this.remoteApplied = false;
    this.answerSent = false;
    this.pendingLocal = [];
    this.pendingRemote = [];
    this.events = [];
    this.error = null;
    this.samples.clear();
  }

  setState(state) {
    this.state = state;
    document.body.dataset.state = state;
    $("status").textContent = state;
    const active = ["negotiating", "connected", "disconnected"].includes(state);
    $("stop").disabled = !active;
    $("pause").disabled = !active || this.paused;
    $("resume").disabled = !active || !this.paused;
    this.renderList();
  }

  // -- the list -----------------------------------------------------------------------------

  async list() {
    try {
      const response = await fetch(API, { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (!response.ok) throw new Error(body?.error?.reason ?? `HTTP ${response.status}`);
      this.mountpoints = body.mountpoints ?? [];
    } catch (err) {
      this.note(`cannot list mountpoints: ${err.message}`);
    }
    this.renderList();
    return this.mountpoints;
  }

  renderList() {
    const body = $("mountpoints");
    body.replaceChildren();
    if (this.mountpoints.length === 0) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 5;
      td.textContent = "no public mountpoint";
      tr.append(td);
      body.append(tr);
      return;
    }
    const current = this.mountpoints.find((m) => m.id === this.watching) ?? null;
    for (const mp of this.mountpoints) {
      const tr = document.createElement("tr");
      tr.dataset.id = String(mp.id);
      if (mp.id === this.watching) tr.className = "watching";
      const cells = [
        String(mp.id),
        mp.name + (mp.pin_required ? " (pin)" : "") + (mp.enabled ? "" : " (disabled)"),
        describeMedia(mp.media),
        String(mp.viewers ?? 0),
      ];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      const live = this.watching !== null && this.pc && this.state !== "stopped";
      if (mp.id === this.watching) {
        button.textContent = "watching";
        button.disabled = true;
      } else if (live) {
        button.textContent = "switch";
        button.className = "switch";
        button.disabled = !compatible(current, mp);
        button.addEventListener("click", () => this.switchTo(mp.id).catch(() => {}));
      } else {
        button.textContent = "watch";
        button.className = "watch";
        button.disabled = !mp.enabled;
        button.addEventListener("click", () => this.watch(mp.id).catch(() => {}));
      }
      td.append(button);
      tr.append(td);
      body.append(tr);
    }
  }

  // -- watching -----------------------------------------------------------------------------

  async ensureSignaling(live) {
    if (this.signaling && !this.signaling.closed) return;
    const signaling = await Signaling.connect(this.options.ws);
    if (!live()) {
      signaling.close();
      throw new Error("superseded");
    }
    this.signaling = signaling;
    signaling.addEventListener("frame", (e) => this.addLog(e.detail.dir, e.detail.frame));
    signaling.addEventListener("close", () => {
      if (this.signaling === signaling && !["stopped", "error", "failed", "idle"].includes(this.state)) {
        this.fail(new Error("signaling connection closed"));
      }
    });
    this.handle = await signaling.attach("streaming");
    $("handle").textContent = String(this.handle.id);
    this.bindHandle(this.handle);
  }

  /** Watches a mountpoint: the server offers, we answer. */
  async watch(id, pin = null) {
    if (this.pc) await this.stopWatching();
    const run = ++this.generation;
    const live = () => run === this.generation;
    this.setState("connecting");
    try {
      await this.ensureSignaling(live);
      const body = { request: "watch", id: Number(id) };
      const thePin = pin ?? ($("pin").value || this.options.pin);
      if (thePin) body.pin = thePin;
      this.setState("negotiating");
      const reply = await this.handle.message(body);
      if (!live()) return;
      this.watching = reply.id;
      this.paused = false;
      $("watching").textContent = String(reply.id);
      const pc = new RTCPeerConnection({
        iceServers: this.options.iceServers,
        bundlePolicy: "max-bundle",
      });
      this.pc = pc;
      this.bindPeerConnection(pc, live);
      await pc.setRemoteDescription({ type: "offer", sdp: reply.sdp });
      this.remoteApplied = true;
      for (const candidate of this.pendingRemote.splice(0)) await this.applyRemote(candidate);
      await pc.setLocalDescription(await pc.createAnswer());
      await this.handle.answer(pc.localDescription.sdp);
      if (!live()) return;
      this.answerSent = true;
      for (const candidate of this.pendingLocal.splice(0)) this.sendCandidate(candidate);
      this.startStatsLoop(live);
      this.renderList();
    } catch (err) {
      if (live()) this.fail(err);
      throw err;
    }
  }

  /** Switches to a compatible mountpoint on the same PeerConnection. */
  async switchTo(id, pin = null) {
    if (!this.handle || !this.pc) throw new Error("not watching");
    const body = { request: "switch", id: Number(id) };
    const thePin = pin ?? ($("pin").value || this.options.pin);
    if (thePin) body.pin = thePin;
    try {
      const reply = await this.handle.message(body);
      this.watching = reply.id;
      $("watching").textContent = String(reply.id);
      this.renderList();
      return reply;
    } catch (err) {
      this.note(`switch refused: ${err.message}`);
      $("error").textContent = err.message;
      throw err;
    }
  }

  async pause() {
    if (!this.handle) return null;
    const reply = await this.handle.message({ request: "pause" });
    this.paused = true;
    this.setState(this.state);
    return reply;
  }

  async resume() {
    if (!this.handle) return null;
    const reply = await this.handle.message({ request: "resume" });
    this.paused = false;
    this.setState(this.state);
    return reply;
  }

  bindHandle(handle) {
    // bound once per handle: events go to whatever PeerConnection is current
    handle.addEventListener("candidate", async (e) => {
      const candidate = e.detail.candidate ?? null;
      if (this.remoteApplied && this.pc) {
        await this.applyRemote(candidate);
      } else {
        this.pendingRemote.push(candidate);
      }
    });
    handle.addEventListener("app", (e) => {
      this.events.push(e.detail.data);
      const result = e.detail.data?.result ?? {};
      if (result.status === "kicked") {
        this.note(`kicked: ${result.reason}`);
        this.closePeer();
        this.watching = null;
        this.setState("stopped");
        this.list();
      }
    });
    handle.addEventListener("hangup", (e) => {
      if (!this.pc) return;
      this.note(`server hung up: ${e.detail.reason ?? "no reason"}`);
      this.closePeer();
      if (this.state !== "stopped") this.setState("hangup");
    });
  }

  bindPeerConnection(pc, live) {
    pc.addEventListener("icecandidate", (e) => {
      if (!live()) return;
      const candidate = e.candidate && e.candidate.candidate ? e.candidate : null;
      if (this.answerSent) this.sendCandidate(candidate);
      else this.pendingLocal.push(candidate);
    });
    pc.addEventListener("track", (e) => {
      const video = $("video");
      const stream = e.streams[0] ?? video.srcObject ?? new MediaStream();
      if (!e.streams[0]) stream.addTrack(e.track);
      video.srcObject = stream;
    });
    this.followConnectionState(pc, live);
  }

  // -- stats --------------------------------------------------------------------------------

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

  async stats() {
    const pc = this.pc;
    const out = {
      state: this.state,
      error: this.error,
      handle: this.handle?.id ?? null,
      watching: this.watching,
      paused: this.paused,
      connectionState: pc?.connectionState ?? null,
      iceConnectionState: pc?.iceConnectionState ?? null,
      selectedPair: null,
      inbound: {},
      events: [...this.events],
    };
    if (!pc || pc.signalingState === "closed") return out;
    const report = await pc.getStats();
    for (const s of report.values()) {
      if (s.type === "inbound-rtp" && !out.inbound[s.kind]) {
        out.inbound[s.kind] = {
          ssrc: s.ssrc,
          packetsReceived: s.packetsReceived ?? 0,
          packetsLost: s.packetsLost ?? 0,
          bytesReceived: s.bytesReceived ?? 0,
          framesDecoded: s.framesDecoded ?? 0,
          keyFramesDecoded: s.keyFramesDecoded ?? 0,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          bitrate: this.rate(s.id, s.bytesReceived ?? 0, s.timestamp),
        };
      } else if (s.type === "transport" && s.selectedCandidatePairId) {
        const pair = report.get(s.selectedCandidatePairId);
        const remote = pair && report.get(pair.remoteCandidateId);
        out.selectedPair = pair
          ? {
              state: pair.state,
              remote: remote ? { address: remote.address, port: remote.port, type: remote.candidateType } : null,
            }
          : null;
      }
    }
    return out;
  }

  rate(id, bytes, timestamp) {
    const prev = this.samples.get(id);
    this.samples.set(id, { bytes, timestamp });
    if (!prev || timestamp <= prev.timestamp) return 0;
    return Math.round(((bytes - prev.bytes) * 8 * 1000) / (timestamp - prev.timestamp));
  }

  render(s) {
    const p = s.selectedPair;
    $("pair").textContent = p?.remote ? `${p.remote.type} ${p.remote.address}:${p.remote.port}` : "-";
    const video = s.inbound.video;
    $("frames").textContent = video ? String(video.framesDecoded) : "-";
    $("resolution").textContent = video?.frameWidth ? `${video.frameWidth}x${video.frameHeight}` : "-";
    const kbps = Object.values(s.inbound).reduce((sum, st) => sum + (st.bitrate ?? 0), 0) / 1000;
    $("bitrate").textContent = `${kbps.toFixed(0)} kbit/s`;
  }

  // -- teardown -----------------------------------------------------------------------------

  fail(err) {
    this.error = err?.message ?? String(err);
    $("error").textContent = this.error;
    this.note(`error: ${this.error}`);
    console.error("watch:", this.error);
    this.closePeer();
    this.setState("error");
  }

  closePeer() {
    clearTimeout(this.statsTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
    this.remoteApplied = false;
    this.answerSent = false;
    this.pendingLocal = [];
    this.pendingRemote = [];
    $("video").srcObject = null;
  }

  /** Stops watching (the server closes its side); the handle stays for the next watch. */
  async stopWatching() {
    const handle = this.handle;
    this.generation++;
    this.closePeer();
    this.watching = null;
    $("watching").textContent = "-";
    if (handle && this.signaling && !this.signaling.closed) {
      await handle.message({ request: "stop" }).catch(() => {});
    }
  }

  /** Stops everything: the PeerConnection, the handle, the WebSocket. */
  async stop() {
    if (["idle", "stopped"].includes(this.state) && !this.signaling) return;
    await this.stopWatching();
    const { handle, signaling } = this;
    this.setState("stopped");
    if (signaling && !signaling.closed) {
      const detach = handle ? handle.detach().catch(() => {}) : Promise.resolve();
      await Promise.race([detach, new Promise((r) => setTimeout(r, DETACH_WAIT_MS))]);
      signaling.close();
    }
    this.signaling = null;
    this.handle = null;
  }
}

const options = readOptions(location.search);
const demo = new Watcher(options);

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
  get watching() {
    return demo.watching;
  },
  get log() {
    return demo.log;
  },
  get mountpoints() {
    return demo.mountpoints;
  },
  options,
  stats: () => demo.stats(),
  list: () => demo.list(),
  watch: (id, pin) => demo.watch(id, pin),
  switchTo: (id, pin) => demo.switchTo(id, pin),
  pause: () => demo.pause(),
  resume: () => demo.resume(),
  start: () => (options.id ? demo.watch(options.id) : Promise.resolve()),
  stop: () => demo.stop(),
};

$("refresh").addEventListener("click", () => demo.list());
$("pause").addEventListener("click", () => demo.pause().catch((e) => demo.note(e.message)));
$("resume").addEventListener("click", () => demo.resume().catch((e) => demo.note(e.message)));
$("stop").addEventListener("click", () => demo.stopWatching().then(() => demo.setState("stopped")));
$("clear-log").addEventListener("click", () => $("log").replaceChildren());
window.addEventListener("pagehide", () => demo.stop());

if (options.error) demo.note(options.error);
if (options.pin) $("pin").value = options.pin;
demo.setState("idle");
demo.list().then(() => {
  if (options.autostart && options.id) demo.watch(options.id).catch(() => {});
});
