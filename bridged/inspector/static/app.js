// bridged inspector: the captured requests, live. Everything a record holds came from the
// network: it reaches the page as text nodes only (never innerHTML), so it cannot run here.
"use strict";

const $ = (sel) => document.querySelector(sel);
const CSRF = { "X-Bridged-Inspector": "1", "Content-Type": "application/json" };
let selected = 0;
let reloadTimer = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.classList.add("shown");
  setTimeout(() => t.classList.remove("shown"), 2500);
}

async function call(url, options) {
  const response = await fetch(url, { credentials: "same-origin", ...options });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const e = data.error || {};
    throw new Error((e.message || `HTTP ${response.status}`) + (e.hint ? ` (${e.hint})` : ""));
  }
  return data;
}

// --- filters and the list ---

function filters() {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($("#filters"))) if (String(v).trim()) params.set(k, String(v).trim());
  return params;
}

function matches(r, f) {
  if (f.get("intercept") && r.intercept !== f.get("intercept")) return false;
  if (f.get("method") && r.method !== f.get("method").toUpperCase()) return false;
  if (f.get("status") && String(r.status) !== f.get("status")) return false;
  if (f.get("path") && !r.target.startsWith(f.get("path"))) return false;
  return true;
}

const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
const statusClass = (s) => (s === 0 ? "s0" : `s${String(s)[0]}`);

// grpc-status codes by number (grpc/doc/statuscodes.md)
const GRPC_STATUS = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];
const grpcName = (code) => (code === null || code === undefined ? "no grpc-status" : GRPC_STATUS[code] || `code ${code}`);

function row(r) {
  const kind = r.kind === "replay" ? el("span", { class: "badge replay" }, `replay of #${r.replay_of}`)
    : r.kind === "mirror" ? el("span", { class: "badge mirror" }, "mirror") : null;
  const grpc = Boolean(r.grpc_method);
  const what = grpc ? el("span", { class: "badge grpc" }, "gRPC") : null;
  const grpcStatus = grpc ? el("span", { class: `grpc-status ${r.grpc_status === 0 ? "ok" : "bad"}`,
    title: `HTTP ${r.status || "—"}, grpc-status ${r.grpc_status ?? "missing"}` }, grpcName(r.grpc_status)) : null;
  // a gRPC call's HTTP status is 200 but when a proxy failed it: the grpc-status says the rest
  const httpStatus = grpc && r.status === 200 ? null : el("span", { class: `status ${statusClass(r.status)}` }, r.status || "—");
  return el("tr", { "data-id": r.id, class: r.id === selected ? "selected" : "", onclick: () => show(r.id) },
    el("td", { class: "num" }, r.id),
    el("td", {}, clock(r.started)),
    el("td", {}, r.intercept),
    el("td", {}, r.method),
    el("td", { class: "path", title: r.target }, what, kind, grpc ? r.grpc_method : r.target),
    el("td", {}, httpStatus, grpcStatus),
    el("td", { class: "num" }, r.duration_ms == null ? "" : r.duration_ms.toFixed(1)));
}

let mirrorDropped = {}; // intercept → {reason: copies the relay did not send}, from /api/stats

const dropsOf = (name) => Object.entries(mirrorDropped[name] || {}).filter(([, n]) => n > 0);
const dropsText = (drops) => drops.map(([why, n]) => `${n} ${why}`).join(", ");

function showStats(s) {
  mirrorDropped = s.mirror_dropped || {};
  const mirrors = Object.keys(mirrorDropped).filter((name) => dropsOf(name).length)
    .map((name) => `mirror ${name}: copies dropped ${dropsText(dropsOf(name))}`);
  $("#stats").textContent = [`${s.records} stored` + (s.dropped ? `, ${s.dropped} oldest dropped (limit ${s.max_records})` : ""),
    ...mirrors].join(" · ");
}

const refreshStats = () => call("/api/stats").then(showStats).catch(() => {});

async function load() {
  const f = filters();
  $("#har").href = `/har?${f}`;
  const data = await call(`/api/records?${f}`);
  $("#rows").replaceChildren(...data.records.map(row));
  $("#empty").hidden = data.records.length > 0;
  showStats(data.stats);
}

function scheduleLoad() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => load().catch((e) => toast(e.message)), 200);
}

function live() {
  const source = new EventSource("/api/events");
  source.onopen = () => $("#live").classList.remove("off");
  source.onerror = () => $("#live").classList.add("off"); // EventSource reconnects by itself
  source.addEventListener("lost", scheduleLoad);
  source.addEventListener("record", (event) => {
    const r = JSON.parse(event.data);
    const f = filters();
    if (f.get("text")) scheduleLoad(); // bodies are searched by the daemon
    else {
      const old = document.querySelector(`#rows tr[data-id="${r.id}"]`);
      if (old) old.replaceWith(row(r));
      else if (matches(r, f)) $("#rows").prepend(row(r));
      $("#empty").hidden = $("#rows").children.length > 0;
      refreshStats();
    }
    if (r.id === selected || (r.replay_of && r.replay_of === selected)) show(selected);
  });
}

// --- the detail view ---

const header = (headers, name) => (headers.find(([n]) => n.toLowerCase() === name) || [])[1] || "";

function bodyText(m) {
  if (m.body_base64 !== undefined) return null;
  return m.body || "";
}

const bytesOf = (m) => (m.body_base64 !== undefined ? atob(m.body_base64).length : new TextEncoder().encode(m.body || "").length);

// What the page shows of a body: {hint, lines} (JSON pretty-printed, so that a diff goes per
// key; binary as hex, 16 bytes a line) or {form} (name/value pairs).
function shownBody(m) {
  const type = header(m.headers, "content-type").split(";")[0].trim().toLowerCase();
  const text = bodyText(m);
  if (text === null) {
    const raw = atob(m.body_base64);
    const lines = [];
    for (let i = 0; i < Math.min(raw.length, 256); i += 16) {
      lines.push(Array.from(raw.slice(i, i + 16), (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" "));
    }
    return { hint: `binary, ${raw.length} bytes` + (raw.length > 256 ? " (first 256 shown)" : ""), lines, cls: "hex" };
  }
  if (!text) return { hint: "no body" };
  if (type.endsWith("json") || type.endsWith("+json")) {
    let pretty = text;
    try { pretty = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* cut or not JSON: as it came */ }
    return { lines: pretty.split(/\r?\n/), cls: "json" };
  }
  if (type === "application/x-www-form-urlencoded") return { form: [...new URLSearchParams(text)] };
  return { lines: text.split(/\r?\n/), cls: "" };
}

// lines of each body compared; past them the lines are shown unmarked
const DIFF_LINES = 2000;

// A line diff by longest common subsequence (the common head and tail taken off first):
// marks[i] is true for a line of a (or b) that is not in the other body.
function lineDiff(a, b) {
  const n = Math.min(a.length, DIFF_LINES), m = Math.min(b.length, DIFF_LINES);
  let start = 0;
  while (start < n && start < m && a[start] === b[start]) start++;
  let endA = n, endB = m;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
  const marksA = new Array(a.length).fill(false), marksB = new Array(b.length).fill(false);
  const rows = endA - start, cols = endB - start, w = cols + 1;
  // t[i*w+j]: the LCS's length of a[start+i..endA) and b[start+j..endB); at most 2000² cells
  const t = new Uint16Array((rows + 1) * w);
  for (let i = rows - 1; i >= 0; i--) {
    for (let j = cols - 1; j >= 0; j--) {
      t[i * w + j] = a[start + i] === b[start + j] ? t[(i + 1) * w + j + 1] + 1 : Math.max(t[(i + 1) * w + j], t[i * w + j + 1]);
    }
  }
  let i = 0, j = 0;
  while (i < rows && j < cols) {
    if (a[start + i] === b[start + j]) { i++; j++; }
    else if (t[(i + 1) * w + j] >= t[i * w + j + 1]) marksA[start + i++] = true;
    else marksB[start + j++] = true;
  }
  while (i < rows) marksA[start + i++] = true;
  while (j < cols) marksB[start + j++] = true;
  return { marksA, marksB, cut: a.length > DIFF_LINES || b.length > DIFF_LINES };
}

// marks: which lines differ from the other body; cls: "del" (left) or "add" (right)
function bodyView(m, shown, marks, cls, other) {
  const s = shown || shownBody(m);
  const parts = [];
  if (m.truncated) parts.push(el("p", { class: "badge cut" }, `cut: ${bytesOf(m)} of ${m.size} bytes kept`));
  if (s.hint) parts.push(el("p", { class: "hint" }, s.hint));
  if (s.form) parts.push(pairs(s.form, "form", other && other.form));
  if (s.lines && marks) {
    parts.push(el("pre", { class: `body diffed ${s.cls}` },
      s.lines.map((line, i) => el("span", { class: marks[i] ? `line ${cls}` : "line" }, line))));
  } else if (s.lines) {
    parts.push(el("pre", { class: `body ${s.cls}` }, s.lines.join("\n")));
  }
  return parts;
}

function pairs(list, cls, other) {
  const seen = new Set((other || []).map(([n, v]) => `${n.toLowerCase()}\n${v}`));
  return el("table", { class: `pairs ${cls || ""}` }, list.map(([n, v]) =>
    el("tr", { class: other && !seen.has(`${n.toLowerCase()}\n${v}`) ? "diff" : "" },
      el("th", {}, n), el("td", { class: v === "[redacted]" ? "redacted" : "" }, v))));
}

// one answer: {title, status, message}; other: the answer beside it, whose differences show
function answer(me, other, body) {
  const m = me.message;
  return el("div", { class: "answer" },
    el("h3", {}, me.title, " ", el("span", { class: `status ${statusClass(me.status)}${other && other.status !== me.status ? " diff" : ""}` }, me.status || "no answer")),
    pairs(m.headers, "", other && other.message.headers),
    m.trailers && m.trailers.length ? [el("h4", {}, "trailers"), pairs(m.trailers, "", other && other.message.trailers)] : null,
    body || bodyView(m));
}

// two answers side by side, the lines of their bodies that differ marked on each side
function compared(left, right) {
  const a = shownBody(left.message), b = shownBody(right.message);
  let note = "";
  let bodies = [bodyView(left.message, a, null, "", b), bodyView(right.message, b, null, "", a)];
  if (a.lines && b.lines) {
    const d = lineDiff(a.lines, b.lines);
    const onlyLeft = d.marksA.filter(Boolean).length, onlyRight = d.marksB.filter(Boolean).length;
    const lines = (n) => `${n} line${n === 1 ? "" : "s"}`;
    note = onlyLeft + onlyRight ? `bodies: ${lines(onlyLeft)} only on the left, ${lines(onlyRight)} only on the right` : "bodies: the same";
    if (d.cut) note += ` (only the first ${DIFF_LINES} lines compared)`;
    bodies = [bodyView(left.message, a, d.marksA, "del"), bodyView(right.message, b, d.marksB, "add")];
  }
  return [el("p", { class: "hint diffnote" }, note),
    el("div", { class: "answers n2" }, answer(left, right, bodies[0]), answer(right, left, bodies[1]))];
}

function curl(r, local) {
  const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
  const base = local ? `http://${local}` : `http://${r.authority || "localhost"}`;
  const args = ["curl", "-i", "-X", r.method, q(base + r.target)];
  for (const [n, v] of r.request.headers) {
    if (["content-length", "connection", "transfer-encoding"].includes(n.toLowerCase()) || v === "[redacted]") continue;
    args.push("-H", q(`${n}: ${v}`));
  }
  const text = bodyText(r.request);
  if (text) args.push("--data-binary", q(text));
  return args.join(" ");
}

function editForm(r) {
  const text = bodyText(r.request);
  const form = el("form", { class: "edit", hidden: "" },
    el("div", { class: "line" },
      el("input", { name: "method", value: r.method, size: 7, "aria-label": "method" }),
      el("input", { name: "target", value: r.target, class: "grow", "aria-label": "path" })),
    el("label", {}, "headers, one per line", el("textarea", { name: "headers", rows: 6 },
      r.request.headers.filter(([n]) => n.toLowerCase() !== "content-length").map(([n, v]) => `${n}: ${v}`).join("\n"))),
    el("label", {}, "body", el("textarea", { name: "body", rows: 8 }, text === null ? "" : text)),
    el("button", { type: "submit" }, "Send edited"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const headers = String(data.get("headers")).split("\n").filter((l) => l.includes(":"))
      .map((l) => [l.slice(0, l.indexOf(":")).trim(), l.slice(l.indexOf(":") + 1).trim()]);
    replay(r.id, { method: data.get("method"), target: data.get("target"), headers, body: data.get("body") });
  });
  return form;
}

async function replay(id, edit) {
  try {
    const data = await call(`/api/records/${id}/replay`, { method: "POST", headers: CSRF, body: JSON.stringify(edit || {}) });
    toast(`replayed: ${data.record.status}` + (data.notes.length ? ` — ${data.notes.join("; ")}` : ""));
    show(id);
  } catch (e) {
    toast(`replay failed: ${e.message}`);
  }
}

// The record's answers: a mirror's laptop and cluster answers, or the captured answer and its
// latest replay, side by side; else the one answer.
function answersOf(r) {
  const latest = r.replays[0];
  const mine = { title: r.kind === "mirror" ? "your laptop's answer" : `captured answer #${r.id}`, status: r.status, message: r.response };
  if (r.kind === "mirror" && r.cluster && !r.cluster_status && !r.cluster.headers.length) {
    // nothing to compare: the cluster's answer broke before its head, or (gateway) the mesh
    // answered the client and the relay never saw it
    return [el("p", { class: "hint" }, r.cluster_note || "the cluster's answer was not seen (it broke before its head, or the mesh answered the client)"), answer(mine)];
  }
  if (r.kind === "mirror" && r.cluster) {
    return compared(mine, { title: "the cluster's answer (what the client got)", status: r.cluster_status, message: r.cluster });
  }
  if (r.kind === "mirror") return [el("p", { class: "hint" }, "waiting for the cluster's answer"), answer(mine)];
  if (latest) return compared(mine, { title: `replay #${latest.id}`, status: latest.status, message: latest.response });
  return [answer({ ...mine, title: "answer" })];
}

// What a live event may redraw: everything but the buttons, the edit form and the curl command,
// so that a form being typed in keeps its text, caret and focus.
function view(r) {
  const drops = r.kind === "mirror" ? dropsOf(r.intercept) : [];
  const facts = [
    ["intercept", r.intercept], ["time", new Date(r.started * 1000).toLocaleString()],
    ["duration", r.duration_ms == null ? "—" : `${r.duration_ms.toFixed(1)} ms`],
    ["HTTP", r.http_version], ["host", r.authority], ["from", r.client],
    ["gRPC method", r.grpc_method], ["gRPC status", r.grpc_method ? `${r.grpc_status ?? "—"} ${grpcName(r.grpc_status)}` : ""],
    ["mirror copies dropped", drops.length ? dropsText(drops) : ""],
    ["replay of", r.replay_of ? `#${r.replay_of}` : ""], ["replays to", r.local],
  ].filter(([, v]) => v !== "" && v !== null && v !== undefined);
  return [
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    answersOf(r),
    // the answers beside each other show the latest replay, a mirror's none
    r.replays.length > (r.kind === "mirror" ? 0 : 1) ? el("p", { class: "hint" }, `${r.replays.length} replay${r.replays.length === 1 ? "" : "s"}: ${r.replays.map((x) => `#${x.id} → ${x.status}`).join(", ")}`) : null,
    el("h3", {}, "request"),
    pairs(r.request.headers),
    bodyView(r.request)];
}

async function show(id) {
  selected = id;
  for (const tr of document.querySelectorAll("#rows tr")) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  let r;
  try { r = await call(`/api/records/${id}`); } catch (e) { $("#detail").replaceChildren(el("p", { class: "error" }, e.message)); return; }
  if (selected !== id) return;
  const shown = $("#detail > .record");
  if (shown && Number(shown.dataset.id) === id) {
    shown.querySelector(".view").replaceChildren(...view(r).flat(Infinity).filter(Boolean));
    return;
  }
  const form = editForm(r);
  const command = el("pre", { id: "curl-text", class: "curl", hidden: "" });
  $("#detail").replaceChildren(el("div", { class: "record", "data-id": r.id },
    el("h2", {}, el("span", { class: "method" }, r.method), " ", r.target),
    el("div", { class: "buttons" },
      el("button", { type: "button", id: "replay", onclick: () => replay(r.id) }, "Replay"),
      el("button", { type: "button", id: "edit", onclick: () => { form.hidden = !form.hidden; } }, "Edit & replay"),
      el("button", { type: "button", id: "curl", onclick: () => copy(command, curl(r, r.local)) }, "Copy as curl")),
    command,
    form,
    el("div", { class: "view" }, view(r))));
}

// The command is shown (to read, or select by hand when the clipboard is refused) and copied.
async function copy(box, text) {
  box.textContent = text;
  box.hidden = false;
  try {
    await navigator.clipboard.writeText(text);
    toast("copied a curl command");
  } catch (e) {
    getSelection().selectAllChildren(box);
    toast("select and copy the command (the clipboard was refused)");
  }
}

// --- start ---

$("#filters").addEventListener("input", scheduleLoad);
$("#filters").addEventListener("submit", (e) => { e.preventDefault(); scheduleLoad(); });
$("#clear").addEventListener("click", async () => {
  if (!confirm("Delete every stored request?")) return;
  try {
    const data = await call("/api/clear", { method: "POST", headers: CSRF, body: "{}" });
    toast(`cleared ${data.cleared}`);
    selected = 0;
    $("#detail").replaceChildren(el("p", { class: "hint" }, "Select a request to see it."));
    load();
  } catch (e) { toast(e.message); }
});
load().catch((e) => toast(e.message));
live();
setInterval(refreshStats, 5000); // a mirror's drops come without a record
