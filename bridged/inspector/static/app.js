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

function row(r) {
  const kind = r.kind === "replay" ? el("span", { class: "badge replay" }, `replay of #${r.replay_of}`)
    : r.kind === "mirror" ? el("span", { class: "badge mirror" }, "mirror") : null;
  const what = r.grpc_method ? el("span", { class: "badge grpc" }, "gRPC") : null;
  return el("tr", { "data-id": r.id, class: r.id === selected ? "selected" : "", onclick: () => show(r.id) },
    el("td", { class: "num" }, r.id),
    el("td", {}, clock(r.started)),
    el("td", {}, r.intercept),
    el("td", {}, r.method),
    el("td", { class: "path", title: r.target }, what, kind, r.target),
    el("td", {}, el("span", { class: `status ${statusClass(r.status)}` }, r.status || "—")),
    el("td", { class: "num" }, r.duration_ms == null ? "" : r.duration_ms.toFixed(1)));
}

function showStats(s) {
  $("#stats").textContent = `${s.records} stored` + (s.dropped ? `, ${s.dropped} oldest dropped (limit ${s.max_records})` : "");
}

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
      call("/api/stats").then(showStats).catch(() => {});
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

function bodyView(m) {
  const parts = [];
  if (m.truncated) parts.push(el("p", { class: "badge cut" }, `cut: ${bytesOf(m)} of ${m.size} bytes kept`));
  const type = header(m.headers, "content-type").split(";")[0].trim().toLowerCase();
  const text = bodyText(m);
  if (text === null) {
    const raw = atob(m.body_base64);
    const hex = Array.from(raw.slice(0, 256), (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" ");
    parts.push(el("p", { class: "hint" }, `binary, ${raw.length} bytes` + (raw.length > 256 ? " (first 256 shown)" : "")),
      el("pre", { class: "body" }, hex));
  } else if (!text) {
    parts.push(el("p", { class: "hint" }, "no body"));
  } else if (type.endsWith("json") || type.endsWith("+json")) {
    let pretty = text;
    try { pretty = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* cut or not JSON: as it came */ }
    parts.push(el("pre", { class: "body json" }, pretty));
  } else if (type === "application/x-www-form-urlencoded") {
    parts.push(pairs([...new URLSearchParams(text)], "form"));
  } else {
    parts.push(el("pre", { class: "body" }, text));
  }
  return parts;
}

const bytesOf = (m) => (m.body_base64 !== undefined ? atob(m.body_base64).length : new TextEncoder().encode(m.body || "").length);

function pairs(list, cls, other) {
  const seen = new Set((other || []).map(([n, v]) => `${n.toLowerCase()}\n${v}`));
  return el("table", { class: `pairs ${cls || ""}` }, list.map(([n, v]) =>
    el("tr", { class: other && !seen.has(`${n.toLowerCase()}\n${v}`) ? "diff" : "" },
      el("th", {}, n), el("td", { class: v === "[redacted]" ? "redacted" : "" }, v))));
}

function answer(title, status, m, other) {
  return el("div", { class: "answer" },
    el("h3", {}, title, " ", el("span", { class: `status ${statusClass(status)}${other && other.status !== status ? " diff" : ""}` }, status || "no answer")),
    pairs(m.headers, "", other && other.message.headers),
    m.trailers && m.trailers.length ? [el("h4", {}, "trailers"), pairs(m.trailers)] : null,
    bodyView(m));
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

async function show(id) {
  selected = id;
  for (const tr of document.querySelectorAll("#rows tr")) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  let r;
  try { r = await call(`/api/records/${id}`); } catch (e) { $("#detail").replaceChildren(el("p", { class: "error" }, e.message)); return; }
  if (selected !== id) return;
  const form = editForm(r);
  const facts = [
    ["intercept", r.intercept], ["time", new Date(r.started * 1000).toLocaleString()],
    ["duration", r.duration_ms == null ? "—" : `${r.duration_ms.toFixed(1)} ms`],
    ["HTTP", r.http_version], ["host", r.authority], ["from", r.client],
    ["gRPC method", r.grpc_method], ["gRPC status", r.grpc_status],
    ["replay of", r.replay_of ? `#${r.replay_of}` : ""], ["replays to", r.local],
  ].filter(([, v]) => v !== "" && v !== null && v !== undefined);
  const latest = r.replays[0];
  const mine = { status: r.status, message: r.response };
  let answers;
  if (r.kind === "mirror" && r.cluster) {
    const theirs = { status: r.cluster_status, message: r.cluster };
    answers = [answer("your answer", r.status, r.response, theirs), answer("the cluster's answer", r.cluster_status, r.cluster, mine)];
  } else if (latest) {
    const again = { status: latest.status, message: latest.response };
    answers = [answer(`captured answer #${r.id}`, r.status, r.response, again),
      answer(`replay #${latest.id}`, latest.status, latest.response, mine)];
  } else {
    answers = [answer("answer", r.status, r.response)];
  }
  $("#detail").replaceChildren(el("div", {},
    el("h2", {}, el("span", { class: "method" }, r.method), " ", r.target),
    el("div", { class: "buttons" },
      el("button", { type: "button", id: "replay", onclick: () => replay(r.id) }, "Replay"),
      el("button", { type: "button", id: "edit", onclick: () => { form.hidden = !form.hidden; } }, "Edit & replay"),
      el("button", { type: "button", id: "curl", onclick: () => copy(curl(r, r.local)) }, "Copy as curl")),
    form,
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("div", { class: `answers n${answers.length}` }, answers),
    r.replays.length > 1 ? el("p", { class: "hint" }, `${r.replays.length} replays: ${r.replays.map((x) => `#${x.id} → ${x.status}`).join(", ")}`) : null,
    el("h3", {}, "request"),
    pairs(r.request.headers),
    bodyView(r.request)));
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("copied a curl command");
  } catch (e) {
    const box = el("textarea", { class: "copy", rows: 4, readonly: "" }, text);
    $("#detail").prepend(box);
    box.select();
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
