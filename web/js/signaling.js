// A small client for the sfu signaling protocol (docs/signaling.md).
//
//   const sig = await Signaling.connect("ws://host:port/ws");
//   sig.addEventListener("frame", (e) => console.log(e.detail.dir, e.detail.frame));
//   const handle = await sig.attach("echotest");
//   handle.addEventListener("candidate", (e) => ...e.detail.candidate...);
//   const answer = await handle.offer(pc.localDescription.sdp);
//   await handle.trickle(candidate);        // RTCIceCandidate, or null at the end
//   await handle.message({ audio: false });
//   await handle.detach(); sig.close();
//
// Requests return promises: an `ack` resolves with its `data`, an `error` rejects with a
// SignalingError (code, reason). Events are dispatched on the handle they name (as
// CustomEvents whose `detail` is the whole frame); every frame in or out is also dispatched on
// the client as a "frame" event ({dir: "in"|"out", frame}) for logging.

export const KEEPALIVE_MS = 25000;
export const REQUEST_TIMEOUT_MS = 15000;

/** A failed request: the server's `error` reply, or a local failure (code 0). */
export class SignalingError extends Error {
  constructor(code, reason, request = null) {
    super(`${code ? `error ${code}: ` : ""}${reason}`);
    this.name = "SignalingError";
    this.code = code;
    this.reason = reason;
    this.request = request;
  }
}

/** The JSON form of a local candidate for a `candidate` request (null stays null). */
export function candidateToJSON(candidate) {
  if (!candidate || !candidate.candidate) return null;
  return {
    candidate: candidate.candidate,
    sdpMid: candidate.sdpMid ?? null,
    sdpMLineIndex: candidate.sdpMLineIndex ?? null,
  };
}

/** Adds a remote candidate from a `candidate` event; null or "" means end-of-candidates. */
export async function addRemoteCandidate(pc, candidate) {
  if (!candidate || !candidate.candidate) {
    await pc.addIceCandidate();
  } else {
    await pc.addIceCandidate(candidate);
  }
}

/** One attached application handle; events for it are dispatched here. */
export class Handle extends EventTarget {
  constructor(client, id, app) {
    super();
    this.client = client;
    this.id = id;
    this.app = app;
  }

  request(type, fields = {}) {
    return this.client.request(type, { handle: this.id, ...fields });
  }

  /** Sends an SDP offer; resolves with the answer ({type: "answer", sdp}). */
  offer(sdp) {
    return this.request("offer", { sdp });
  }

  /** Answers a server offer (an `offer` event). */
  answer(sdp) {
    return this.request("answer", { sdp });
  }

  /** Trickles one local candidate; null (or an empty candidate) = end-of-candidates. */
  trickle(candidate) {
    return this.request("candidate", { candidate: candidateToJSON(candidate) });
  }

  /** Sends an application request (e.g. echo test `{bitrate: 256000}`). */
  message(body) {
    return this.request("message", { body });
  }

  hangup() {
    return this.request("hangup");
  }

  async detach() {
    try {
      return await this.request("detach");
    } finally {
      this.client.handles.delete(this.id);
    }
  }
}

/** The WebSocket connection: ids, pending requests, events, keepalive. */
export class Signaling extends EventTarget {
  constructor(ws, { keepaliveMs = KEEPALIVE_MS, timeoutMs = REQUEST_TIMEOUT_MS } = {}) {
    super();
    this.ws = ws;
    this.timeoutMs = timeoutMs;
    this.nextId = 1;
    this.pending = new Map();
    this.handles = new Map();
    this.closed = false;
    ws.addEventListener("message", (e) => this.onMessage(e.data));
    ws.addEventListener("close", (e) => this.onClose(e.code, e.reason));
    this.keepalive = setInterval(() => {
      this.request("keepalive").catch(() => {});
    }, keepaliveMs);
  }

  /** Opens the WebSocket; resolves once it is open, rejects if it cannot open. */
  static connect(url, options = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const fail = () => reject(new SignalingError(0, `cannot connect to ${url}`));
      ws.addEventListener("error", fail, { once: true });
      ws.addEventListener(
        "open",
        () => {
          ws.removeEventListener("error", fail);
          resolve(new Signaling(ws, options));
        },
        { once: true },
      );
    });
  }

  /** Sends a request; resolves with the ack's `data`, rejects with a SignalingError. */
  request(type, fields = {}) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new SignalingError(0, "signaling is closed", type));
    }
    const id = this.nextId++;
    const frame = { type, id, ...fields };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SignalingError(0, `${type} timed out`, frame));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer, frame });
      this.send(frame);
    });
  }

  /** Attaches an application; resolves with its Handle. */
  async attach(app) {
    const data = await this.request("attach", { app });
    const handle = new Handle(this, data.handle, app);
    this.handles.set(handle.id, handle);
    return handle;
  }

  send(frame) {
    this.emit("frame", { dir: "out", frame });
    this.ws.send(JSON.stringify(frame));
  }

  emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  onMessage(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this.emit("frame", { dir: "in", frame: { unparsed: String(data) } });
      return;
    }
    this.emit("frame", { dir: "in", frame });
    if (frame.type === "ack" || frame.type === "error") {
      const entry = this.pending.get(frame.id);
      if (!entry) {
        if (frame.type === "error") this.emit("error", frame);
        return;
      }
      this.pending.delete(frame.id);
      clearTimeout(entry.timer);
      if (frame.type === "ack") {
        entry.resolve(frame.data ?? {});
      } else {
        entry.reject(new SignalingError(frame.code, frame.reason, entry.frame));
      }
    } else if (frame.type === "event") {
      const target = this.handles.get(frame.handle) ?? this;
      target.dispatchEvent(new CustomEvent(frame.event, { detail: frame }));
    }
  }

  onClose(code, reason) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keepalive);
    for (const entry of this.pending.values()) {
      clearTimeout(entry.timer);
      entry.reject(new SignalingError(0, "signaling closed", entry.frame));
    }
    this.pending.clear();
    this.emit("close", { code, reason });
  }

  close() {
    this.ws.close();
    this.onClose(1000, "closed by client");
  }
}
