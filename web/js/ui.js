// Small pieces every demo page uses: element lookup and the signaling log panel.

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
