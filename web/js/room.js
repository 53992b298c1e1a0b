// The video room page: join a room of the server's "room" app, publish the camera, and see
// every other participant (docs/rooms.md).
//
// Two handles on one WebSocket: the publisher handle joins and offers the camera (sendonly);
// the subscriber handle gets ONE server-offered PeerConnection with everyone else's tracks,
// re-offered (an `offer` event) whenever someone publishes or leaves.
//
// Query parameters: ws=, ice= (as on the echo page), room=, name=, token=, publish=0 (watch
// only), simulcast=1 (publish 1280x720 as three rid layers q, h, f), autostart=1. Each received
// simulcast video gets a layer selector (a `configure` request; `layer` events say which layer
// arrives). Tests read window.sfuDemo ({state, stats(), start(), stop(), configure(), ...}) and
// <body data-state>: idle, joining, joined, error, hangup, stopped.

import { Signaling, addRemoteCandidate } from "./signaling.js";
import { $, appendLog } from "./ui.js";

const STATS_INTERVAL_MS = 1000;
const DETACH_WAIT_MS = 1000;
const ENDED = ["idle", "stopped", "error"];
// Simulcast layers, lowest first (the server expects this order).
const SIMULCAST_ENCODINGS = [
  { rid: "q", scaleResolutionDownBy: 4 },
  { rid: "h", scaleResolutionDownBy: 2 },
  { rid: "f", scaleResolutionDownBy: 1 },
];


function readOptions(search) {
  const params = new URLSearchParams(search);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const options = {
    ws: params.get("ws") || `${scheme}://${location.host}/ws`,
    iceServers: [],
    room: params.get("room") || "demo",
    name: params.get("name") || `guest-${Math.random().toString(16).slice(2, 6)}`,
    token: params.get("token") || "",
    publish: params.get("publish") !== "0",
    simulcast: params.get("simulcast") === "1",
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


/** One PeerConnection on one handle, with candidates queued until each side is ready. */
class Link {
  constructor(handle, options, note) {
    this.handle = handle;
    this.note = note;
    this.pc = new RTCPeerConnection({
      iceServers: options.iceServers,
      bundlePolicy: "max-bundle",
    });
    this.localReady = false; // our SDP reached the server: trickle
    this.remoteReady = false; // the server's SDP is applied: add its candidates
    this.pendingLocal = [];
    this.pendingRemote = [];
    this.pc.addEventListener("icecandidate", (e) => {
      const candidate = e.candidate && e.candidate.candidate ? e.candidate : null;
      if (this.localReady) this.trickle(candidate);
      else this.pendingLocal.push(candidate);
    });
    handle.addEventListener("candidate", (e) => {
      const candidate = e.detail.candidate ?? null;
      if (this.remoteReady) this.addRemote(candidate);
      else this.pendingRemote.push(candidate);
    });
  }

  trickle(candidate) {
    this.handle.trickle(candidate).catch((err) => this.note(`candidate refused: ${err.message}`));
  }

  async addRemote(candidate) {
    try {
      await addRemoteCandidate(this.pc, candidate);
    } catch (err) {
      this.note(`remote candidate rejected: ${err.message}`);
    }
  }

  sentLocal() {
    if (this.localReady) return;
    this.localReady = true;
    for (const c of this.pendingLocal.splice(0)) this.trickle(c);
  }

  async appliedRemote() {
    if (this.remoteReady) return;
    this.remoteReady = true;
    for (const c of this.pendingRemote.splice(0)) await this.addRemote(c);
  }

  close() {
    this.pc.close();
  }
}

class RoomDemo {
  constructor(options) {
    this.options = options;
    this.state = "idle";
    this.generation = 0;
    this.log = [];
    this.reset();
  }

  reset() {
    this.signaling = null;
    this.pubHandle = null;
    this.subHandle = null;
    this.pub = null;
    this.sub = null;
    this.stream = null;
    this.me = null;
    this.participants = new Map(); // id -> {id, display, tracks}
    this.streams = []; // the last applied offer's streams
    this.remoteStreams = new Map(); // participant id -> MediaStream
    this.layers = new Map(); // subscriber mid -> {layer, requested} from `layer` events
    this.offers = 0;
    this.offerChain = Promise.resolve();
    this.error = null;
  }

  setState(state) {
    this.state = state;
    document.body.dataset.state = state;
    $("status").textContent = state;
    $("join").disabled = !ENDED.includes(state) && state !== "hangup";
    $("leave").disabled = ENDED.includes(state);
  }

  note(text) {
    this.addLog("note", { note: text });
  }

  addLog(dir, frame) {
    appendLog(this.log, dir, frame);
  }

  readForm() {
    this.options.room = $("room").value.trim() || this.options.room;
    this.options.name = $("name").value.trim() || this.options.name;
    this.options.token = $("token").value.trim();
    this.options.publish = $("publish").checked;
    this.options.simulcast = $("simulcast").checked;
  }

  async start() {
    if (!ENDED.includes(this.state) && this.state !== "hangup") return;
    const run = ++this.generation;
    const live = () => run === this.generation;
    await this.teardown();
    this.reset();
    this.clearViews();
    this.readForm();
    this.setState("joining");
    const { room, name, token, publish } = this.options;
    try {
      const signaling = await Signaling.connect(this.options.ws);
      if (!live()) return signaling.close();
      this.signaling = signaling;
      signaling.addEventListener("frame", (e) => this.addLog(e.detail.dir, e.detail.frame));
      signaling.addEventListener("close", () => {
        if (live() && !ENDED.includes(this.state)) this.fail(new Error("signaling closed"));
      });

      // the participant's own handle: join, then publish
      this.pubHandle = await signaling.attach("room");
      this.pubHandle.addEventListener("app", (e) => this.onRoomEvent(e.detail.data));
      this.pubHandle.addEventListener("hangup", (e) => {
        this.note(`publisher hung up: ${e.detail.reason}`);
        $("publishing").textContent = "no";
      });
      const joinBody = { request: "join", room, display: name };
      if (token) joinBody.token = token;
      const joined = await this.pubHandle.message(joinBody);
      if (!live()) return;
      this.me = joined.participant;
      for (const p of joined.participants) this.participants.set(p.id, p);
      $("me").textContent = `${this.me.display} (${this.me.id})`;
      this.renderParticipants();
      if (publish) await this.publish(live);

      // the subscriber handle: one PeerConnection the server offers and renegotiates
      this.subHandle = await signaling.attach("room");
      this.sub = new Link(this.subHandle, this.options, (t) => this.note(t));
      this.sub.pc.addEventListener("track", () => this.renderRemotes());
      this.subHandle.addEventListener("offer", (e) => this.queueOffer(e.detail, live));
      this.subHandle.addEventListener("app", (e) => this.onLayerEvent(e.detail.data));
      this.subHandle.addEventListener("hangup", (e) => {
        if (!live()) return;
        this.note(`subscription ended: ${e.detail.reason}`);
        this.setState("hangup");
      });
      const subBody = { request: "subscribe", room, participant: this.me.id };
      if (token) subBody.token = token;
      const sub = await this.subHandle.message(subBody);
      if (!live()) return;
      if (sub.sdp) this.queueOffer(sub, live);
      this.setState("joined");
      this.startStatsLoop(live);
    } catch (err) {
      if (live()) this.fail(err);
    }
  }

  async publish(live) {
    const simulcast = this.options.simulcast;
    const video = simulcast ? { width: { ideal: 1280 }, height: { ideal: 720 } } : true;
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video });
    if (!live()) return;
    $("local-video").srcObject = this.stream;
    $("local-caption").textContent = `${this.me.display} (you)`;
    this.pub = new Link(this.pubHandle, this.options, (t) => this.note(t));
    const pc = this.pub.pc;
    for (const track of this.stream.getTracks()) {
      const init = { direction: "sendonly", streams: [this.stream] };
      if (simulcast && track.kind === "video") init.sendEncodings = SIMULCAST_ENCODINGS;
      pc.addTransceiver(track, init);
    }
    await pc.setLocalDescription(await pc.createOffer());
    const answer = await this.pubHandle.offer(pc.localDescription.sdp);
    if (!live()) return;
    this.pub.sentLocal();
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    await this.pub.appliedRemote();
    $("publishing").textContent = "yes";
  }

  /** Offers are applied one at a time, in order. */
  queueOffer(offer, live) {
    this.offerChain = this.offerChain
      .then(() => (live() ? this.applyOffer(offer) : null))
      .catch((err) => live() && this.fail(err));
  }

  async applyOffer({ sdp, streams }) {
    const pc = this.sub.pc;
    await pc.setRemoteDescription({ type: "offer", sdp });
    await this.sub.appliedRemote();
    await pc.setLocalDescription(await pc.createAnswer());
    await this.subHandle.answer(pc.localDescription.sdp);
    this.sub.sentLocal();
    this.offers += 1;
    this.streams = streams;
    this.renderRemotes();
  }

  /** `layer` events on the subscriber handle: which simulcast layer a section receives. */
  onLayerEvent(data) {
    if (data?.event !== "layer") return;
    this.layers.set(data.mid, { layer: data.layer, requested: data.requested });
    const label = document.querySelector(`[data-layer-of="${data.mid}"]`);
    if (label) label.textContent = `receiving ${data.layer}`;
  }

  /** Ask for a layer (a rid, an index or "auto") of the simulcast section `mid`. */
  configure(mid, layer) {
    return this.subHandle.message({ request: "configure", mid, layer });
  }

  /** A layer selector per simulcast video section of a participant's figure. */
  renderLayerControls(figure, sections) {
    for (const s of sections) {
      if (!s.layers || figure.querySelector(`select[data-mid="${s.mid}"]`)) continue;
      const label = document.createElement("label");
      label.className = "layer";
      const select = document.createElement("select");
      select.dataset.mid = s.mid;
      for (const name of ["auto", ...s.layers]) select.append(new Option(name, name));
      select.addEventListener("change", () =>
        this.configure(s.mid, select.value).catch((err) => this.note(`configure: ${err.message}`)),
      );
      const current = document.createElement("span");
      current.dataset.layerOf = s.mid;
      current.textContent = this.layers.has(s.mid) ? `receiving ${this.layers.get(s.mid).layer}` : "";
      label.append("layer ", select, " ", current);
      figure.append(label);
    }
  }

  onRoomEvent(data) {
    const p = data.participant;
    if (data.event === "left") this.participants.delete(p.id);
    else this.participants.set(p.id, p);
    this.renderParticipants();
  }

  renderParticipants() {
    const names = [...this.participants.values()].map((p) => `${p.display} (${p.tracks.length})`);
    $("participants").textContent = names.join(", ") || "nobody yet";
  }

  /** One <video> per participant with active streams, fed by the transceivers of its mids. */
  renderRemotes() {
    if (!this.sub) return;
    const byMid = new Map(this.sub.pc.getTransceivers().map((t) => [t.mid, t]));
    const tracks = new Map(); // participant -> [track]
    const names = new Map();
    const sections = new Map(); // participant -> [stream entries]
    for (const s of this.streams) {
      const transceiver = byMid.get(s.mid);
      if (!s.active || !transceiver) continue;
      if (!tracks.has(s.participant)) tracks.set(s.participant, []);
      tracks.get(s.participant).push(transceiver.receiver.track);
      names.set(s.participant, s.display);
      if (!sections.has(s.participant)) sections.set(s.participant, []);
      sections.get(s.participant).push(s);
    }
    for (const [pid, list] of tracks) {
      let stream = this.remoteStreams.get(pid);
      if (!stream) {
        stream = new MediaStream();
        this.remoteStreams.set(pid, stream);
        const figure = document.createElement("figure");
        figure.id = `remote-${pid}`;
        figure.className = "remote";
        const video = document.createElement("video");
        video.autoplay = true;
        video.playsInline = true;
        video.srcObject = stream;
        const caption = document.createElement("figcaption");
        caption.textContent = names.get(pid) ?? pid;
        figure.append(video, caption);
        $("videos").append(figure);
      }
      this.renderLayerControls($(`remote-${pid}`), sections.get(pid) ?? []);
      for (const old of stream.getTracks()) if (!list.includes(old)) stream.removeTrack(old);
      for (const track of list) if (!stream.getTracks().includes(track)) stream.addTrack(track);
    }
    for (const pid of [...this.remoteStreams.keys()]) {
      if (!tracks.has(pid)) {
        this.remoteStreams.delete(pid);
        $(`remote-${pid}`)?.remove();
      }
    }
    $("streams").textContent = `${this.streams.filter((s) => s.active).length} active, ${
      this.streams.length
    } sections, ${this.offers} offer(s)`;
  }

  startStatsLoop(live) {
    const tick = async () => {
      if (!live()) return;
      try {
        const s = await this.stats();
        const frames = Object.values(s.remote).map((r) => `${r.display}: ${r.framesDecoded}`);
        $("frames").textContent = frames.join(", ") || "-";
      } catch (err) {
        this.note(`getStats failed: ${err.message}`);
      }
      if (live()) this.statsTimer = setTimeout(tick, STATS_INTERVAL_MS);
    };
    tick();
  }

  /** Per remote participant: frames decoded and packets received, from getStats by mid. */
  async stats() {
    const out = {
      state: this.state,
      error: this.error,
      me: this.me,
      participants: [...this.participants.values()],
      streams: this.streams,
      offers: this.offers,
      publishing: null,
      remote: {},
      inbound: {},
      video: {}, // subscriber mid -> {frameWidth, frameHeight, framesDecoded, trackIdentifier, layer}
    };
    if (this.pub && this.pub.pc.signalingState !== "closed") {
      const report = await this.pub.pc.getStats();
      for (const s of report.values()) {
        if (s.type === "outbound-rtp" && s.kind === "video") {
          const p = (out.publishing ??= { framesEncoded: 0, packetsSent: 0, layers: {} });
          p.framesEncoded += s.framesEncoded ?? 0;
          p.packetsSent += s.packetsSent ?? 0;
          if (s.rid) p.layers[s.rid] = { frameWidth: s.frameWidth ?? 0, active: s.active };
        }
      }
    }
    if (!this.sub || this.sub.pc.signalingState === "closed") return out;
    const owner = new Map(this.streams.map((s) => [s.mid, s]));
    const report = await this.sub.pc.getStats();
    for (const s of report.values()) {
      if (s.type !== "inbound-rtp") continue;
      const entry = owner.get(s.mid);
      if (!entry || !entry.active) continue;
      const r = (out.remote[entry.participant] ??= {
        display: entry.display,
        framesDecoded: 0,
        packetsReceived: 0,
        kinds: [],
      });
      r.kinds.push(s.kind);
      r.packetsReceived += s.packetsReceived ?? 0;
      if (s.kind === "video") {
        r.framesDecoded += s.framesDecoded ?? 0;
        out.video[s.mid] = {
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          framesDecoded: s.framesDecoded ?? 0,
          trackIdentifier: s.trackIdentifier,
          layer: this.layers.get(s.mid)?.layer ?? null,
        };
      }
      const total = (out.inbound[s.kind] ??= { framesDecoded: 0, packetsReceived: 0 });
      total.framesDecoded += s.framesDecoded ?? 0;
      total.packetsReceived += s.packetsReceived ?? 0;
    }
    return out;
  }

  fail(err) {
    this.error = err?.message ?? String(err);
    $("error").textContent = this.error;
    this.note(`error: ${this.error}`);
    console.error("room:", this.error);
    this.teardown();
    this.setState("error");
  }

  /** Leaves the room and closes everything; resolves once detached (<= 1 s). */
  teardown() {
    clearTimeout(this.statsTimer);
    for (const link of [this.pub, this.sub]) if (link) link.close();
    if (this.stream) for (const track of this.stream.getTracks()) track.stop();
    const { signaling, pubHandle, subHandle } = this;
    if (!signaling || signaling.closed) return Promise.resolve();
    const bye = (async () => {
      if (pubHandle) await pubHandle.message({ request: "leave" }).catch(() => {});
      for (const h of [subHandle, pubHandle]) if (h) await h.detach().catch(() => {});
    })();
    const bounded = Promise.race([bye, new Promise((r) => setTimeout(r, DETACH_WAIT_MS))]);
    return bounded.finally(() => signaling.close());
  }

  clearViews() {
    for (const el of document.querySelectorAll("figure.remote")) el.remove();
    for (const id of ["me", "participants", "publishing", "streams", "frames"]) {
      $(id).textContent = "-";
    }
    $("error").textContent = "";
    $("local-video").srcObject = null;
    $("local-caption").textContent = "you";
  }

  stop() {
    if (["idle", "stopped"].includes(this.state)) return Promise.resolve();
    this.generation++;
    const done = this.teardown();
    this.setState("stopped");
    return done;
  }
}

const options = readOptions(location.search);
const demo = new RoomDemo(options);
$("room").value = options.room;
$("name").value = options.name;
$("token").value = options.token;
$("publish").checked = options.publish;
$("simulcast").checked = options.simulcast;

window.sfuDemo = {
  get state() {
    return demo.state;
  },
  get me() {
    return demo.me;
  },
  get pubPc() {
    return demo.pub?.pc ?? null;
  },
  get subPc() {
    return demo.sub?.pc ?? null;
  },
  get log() {
    return demo.log;
  },
  options,
  stats: () => demo.stats(),
  start: () => demo.start(),
  stop: () => demo.stop(),
  configure: (mid, layer) => demo.configure(mid, layer),
};

$("join").addEventListener("click", () => demo.start());
$("leave").addEventListener("click", () => demo.stop());
$("clear-log").addEventListener("click", () => $("log").replaceChildren());
window.addEventListener("pagehide", () => demo.stop());

if (options.error) demo.note(options.error);
demo.setState("idle");
if (options.autostart) demo.start();
