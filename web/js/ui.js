// Small pieces every demo page uses: element lookup, the signaling log panel, and the part of
// a page that drives one PeerConnection.

import { addRemoteCandidate } from "./signaling.js";

export const LOG_LIMIT = 500;

export const $ = (id) => document.getElementById(id);

/** A frame as one line, SDP bodies shortened to their size. */
export function abbreviate(frame) {
  return JSON.stringify(frame, (key, value) =>
    key === "sdp" && typeof value === "string" ? `<sdp ${value.length} bytes>` : value,
  );
}

/**
 * Append one signaling frame to `log` (an array the tests read as `sfuDemo.log`) and to the
 * page's `<ul id="log">`, each capped at LOG_LIMIT entries.
 */
export function appendLog(log, dir, frame) {
  const entry = { t: performance.now(), dir, frame };
  log.push(entry);
  if (log.length > LOG_LIMIT) log.shift();
  const list = $("log");
  if (!list) return;
  const li = document.createElement("li");
  li.className = `log-${dir}`;
  const details = document.createElement("details");
  const summary = document.createElement("summary");
  const arrow = { out: "\u2192", in: "\u2190", note: "\u2022" }[dir] ?? dir;
  summary.textContent = `${(entry.t / 1000).toFixed(3)} ${arrow} ${abbreviate(frame)}`;
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(frame, null, 2);
  details.append(summary, pre);
  li.append(details);
  list.append(li);
  while (list.childElementCount > LOG_LIMIT) list.firstElementChild.remove();
}

/**
 * What the echo test and the watch page share: the signaling log, trickling a candidate to the
 * server, applying one from it, and following the PeerConnection's state. A subclass has
 * `log`, `handle`, `pc` and `setState(state)`.
 */
export class PeerPage {
  note(text) {
    this.addLog("note", { note: text });
  }

  addLog(dir, frame) {
    appendLog(this.log, dir, frame);
  }

  sendCandidate(candidate) {
    this.handle
      .trickle(candidate)
      .catch((err) => this.note(`candidate not accepted: ${err.message}`));
  }

  async applyRemote(candidate) {
    try {
      await addRemoteCandidate(this.pc, candidate);
    } catch (err) {
      this.note(`remote candidate rejected: ${err.message}`);
    }
  }

  /** Show pc.connectionState in #conn-state and move the page's state with it. */
  followConnectionState(pc, live) {
    pc.addEventListener("connectionstatechange", () => {
      if (!live()) return;
      const state = pc.connectionState;
      $("conn-state").textContent = state;
      if (state === "connected") this.setState("connected");
      else if (state === "disconnected") this.setState("disconnected");
      else if (state === "failed") {
        this.note("peer connection failed");
        this.setState("failed");
      }
    });
  }
}
