// The console's page: no build step, no library, nothing fetched but this service's own API.
// The token comes once (the sign-in form, or #token=... in the address), stays in this tab's
// sessionStorage, and goes with every request as "Authorization: Bearer <token>".
"use strict";

const LIST_EVERY_MS = 2000;
const OUTCOMES = {
  caller_hung_up: "hung up by caller", model_hung_up: "hung up by the model",
  supervisor_hung_up: "hung up by a supervisor", transferred: "transferred",
  voicemail: "voicemail left", no_answer: "no answer", busy: "busy", canceled: "canceled",
  failed: "failed", disconnected: "line dropped", completed: "completed",
};
const $ = (id) => document.getElementById(id);
const state = {
  token: null, calls: new Map(), rows: new Map(), selected: null, view: null,
  listTimer: null, clockTimer: null, older: null,
};

// --- the token --------------------------------------------------------------------------------
function takeToken() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("console-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search); // out of the address bar
  }
  return sessionStorage.getItem("console-token");
}

function signedOut(message) {
  sessionStorage.removeItem("console-token");
  state.token = null;
  clearInterval(state.listTimer);
  if (state.view) state.view.abort.abort();
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers, { Authorization: `Bearer ${state.token}` });
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    signedOut("That token was refused.");
    throw new Error("unauthorized");
  }
  return response;
}

// --- formatting -------------------------------------------------------------------------------
const two = (n) => String(n).padStart(2, "0");
function clock(ms) {
  const d = new Date(ms);
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}
function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  return s >= 3600 ? `${Math.floor(s / 3600)}:${two(Math.floor(s / 60) % 60)}:${two(s % 60)}`
    : `${Math.floor(s / 60)}:${two(s % 60)}`;
}
const count = (n) => Number(n).toLocaleString("en-US");
const TOKEN_KINDS = {
  audio_in: "audio in", audio_cached: "audio in (cached)", audio_out: "audio out",
  text_in: "text in", text_cached: "text in (cached)", text_out: "text out",
  image_in: "image in", image_cached: "image in (cached)",
};
function usageText(usage) {
  // The tokens the call used, from the API's usage (summed from each response.done).
  const tokens = usage && usage.tokens ? Object.entries(usage.tokens) : [];
  if (!tokens.length) return "";
  const total = tokens.reduce((sum, [, n]) => sum + n, 0);
  const parts = tokens.map(([kind, n]) => `${TOKEN_KINDS[kind] || kind} ${count(n)}`);
  const responses = `${usage.responses} response${usage.responses === 1 ? "" : "s"}`;
  return `${count(total)} tokens in ${responses} (${parts.join(" · ")})`;
}
function costText(usage) {
  if (!usage || !usage.tokens || !Object.keys(usage.tokens).length) return "";
  const unpriced = usage.unpriced_models && usage.unpriced_models.length
    ? `; no price for ${usage.unpriced_models.join(", ")}` : "";
  if (usage.estimated_cost_usd == null) return `unknown${unpriced}`;
  const dollars = usage.estimated_cost_usd < 0.01 ? usage.estimated_cost_usd.toFixed(4)
    : usage.estimated_cost_usd.toFixed(2);
  return `$${dollars} (estimated, prices of ${usage.prices_as_of}${unpriced})`;
}
const outcomeText = (o) => (o ? OUTCOMES[o] || o.replaceAll("_", " ") : "");
const stateText = (s) => s.replace("_", " ");
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// --- the list ---------------------------------------------------------------------------------
async function refreshList() {
  let page;
  try {
    page = await (await api("/api/calls?limit=200")).json();
  } catch (error) {
    return; // signed out, or the console is restarting: the next tick tries again
  }
  const t0 = performance.now();
  const seen = new Set();
  for (const call of page.calls) {
    seen.add(call.call_sid);
    state.calls.set(call.call_sid, call);
  }
  for (const sid of [...state.calls.keys()]) {
    if (!seen.has(sid) && !state.older) state.calls.delete(sid);
  }
  renderList(page.calls.map((c) => c.call_sid));
  window.consoleListRenderMs = performance.now() - t0; // read by the page test
  const live = page.calls.filter((c) => c.state !== "ended").length;
  $("summary").textContent = `${live} live · ${page.calls.length} shown`;
  if (state.selected && state.calls.has(state.selected)) updateFacts(state.calls.get(state.selected));
}

function renderList(order) {
  // Rows are kept by CallSid and only their changed cells rewritten, so a refresh with 100
  // live calls touches little of the page.
  const body = document.querySelector("#calls tbody");
  const liveOnly = $("live-only").checked;
  const now = Date.now();
  let previous = null;
  for (const sid of order) {
    const call = state.calls.get(sid);
    let row = state.rows.get(sid);
    if (!row) {
      row = el("tr", { "data-sid": sid });
      for (let i = 0; i < 7; i++) row.append(el("td"));
      row.cells[0].append(el("span", { class: "state" }));
      row.addEventListener("click", () => openCall(sid));
      state.rows.set(sid, row);
    }
    const end = call.ended_at || now;
    const cells = [null, call.direction, call.from || "—", call.to || "—", clock(call.started_at),
      duration(end - call.started_at), outcomeText(call.outcome)];
    const badge = row.cells[0].firstChild;
    if (badge.textContent !== stateText(call.state)) {
      badge.textContent = stateText(call.state);
      badge.className = `state state-${call.state}`;
    }
    for (let i = 1; i < 7; i++) if (row.cells[i].textContent !== cells[i]) row.cells[i].textContent = cells[i];
    row.hidden = liveOnly && call.state === "ended";
    row.classList.toggle("selected", sid === state.selected);
    const wanted = previous ? previous.nextSibling : body.firstChild;
    if (wanted !== row) body.insertBefore(row, wanted);
    previous = row;
  }
  for (const [sid, row] of state.rows) {
    if (!state.calls.has(sid)) { row.remove(); state.rows.delete(sid); }
  }
}

// --- one call ---------------------------------------------------------------------------------
function updateFacts(update) {
  // The list's line and the call's detail both come here: merged, so neither hides the other.
  const call = state.view ? (state.view.call = Object.assign(state.view.call || {}, update)) : update;
  const facts = $("call-facts");
  facts.replaceChildren();
  const add = (name, value) => { if (value) facts.append(el("dt", {}, name), el("dd", {}, value)); };
  add("state", stateText(call.state));
  add("direction", call.direction);
  add("from", call.from);
  add("to", call.to);
  add("started", clock(call.started_at));
  add("duration", duration((call.ended_at || Date.now()) - call.started_at));
  add("outcome", outcomeText(call.outcome));
  add("model dialect", call.dialect);
  add("answered by", call.answered_by);
  if (call.latency && call.latency.first_reply_ms != null) add("first reply", `${call.latency.first_reply_ms} ms`);
  add("usage", usageText(call.usage));
  add("estimated cost", costText(call.usage));
  $("hangup").hidden = call.state === "ended";
  drawTimeline();
}

async function openCall(sid) {
  if (state.view) state.view.abort.abort();
  state.selected = sid;
  for (const [s, row] of state.rows) row.classList.toggle("selected", s === sid);
  const view = { sid, abort: new AbortController(), call: state.calls.get(sid) || null, events: [],
    tools: new Map(), lastId: null, ended: false };
  state.view = view;
  $("call-pane").hidden = false;
  $("call-title").textContent = sid;
  $("transcript").replaceChildren();
  $("tools").replaceChildren();
  $("mcp").replaceChildren();
  $("notes").replaceChildren();
  $("recording").hidden = true;
  await loadDetail(view);
  follow(view);
}

async function loadDetail(view) {
  try {
    const response = await api(`/api/calls/${view.sid}`);
    if (!response.ok) return;
    const detail = await response.json();
    if (state.view !== view) return;
    updateFacts(detail);
    if (detail.recording && $("recording").hidden) showRecording(view);
  } catch (error) { /* the next event or list refresh tries again */ }
}

async function showRecording(view) {
  const response = await api(`/api/calls/${view.sid}/recording`);
  if (!response.ok || state.view !== view) return;
  const audio = $("recording").querySelector("audio");
  audio.src = URL.createObjectURL(await response.blob()); // an <audio src> cannot carry the header
  $("recording").hidden = false;
}

// Server-sent events over fetch (EventSource cannot send the Authorization header), resumed
// with Last-Event-ID after a dropped connection.
async function follow(view) {
  while (!view.ended && state.view === view) {
    try {
      const headers = view.lastId ? { "Last-Event-ID": view.lastId } : {};
      const response = await api(`/api/calls/${view.sid}/events`, { headers, signal: view.abort.signal });
      if (!response.ok) return;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          onMessage(view, buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
      if (!view.ended) await new Promise((r) => setTimeout(r, 1000));
    } catch (error) {
      if (view.abort.signal.aborted) return;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

function onMessage(view, block) {
  let id = null, data = null;
  for (const line of block.split("\n")) {
    if (line.startsWith("id: ")) id = line.slice(4);
    else if (line.startsWith("data: ")) data = JSON.parse(line.slice(6));
  }
  if (!data || state.view !== view) return;
  view.lastId = id;
  view.events.push(data);
  const at = el("span", { class: "at" }, clock(data.at));
  if (data.kind === "transcript") {
    const role = data.role === "caller" ? "caller" : "assistant";
    const list = $("transcript");
    list.append(el("li", { class: role, "data-role": role }, at, data.text));
    list.scrollTop = list.scrollHeight;
    // Who spoke when comes from the audio, in the detail: fetched again after each turn.
    clearTimeout(view.detailTimer);
    view.detailTimer = setTimeout(() => loadDetail(view), 250);
  } else if (data.kind === "usage") {
    // A response's tokens: the detail sums them (and prices them).
    clearTimeout(view.detailTimer);
    view.detailTimer = setTimeout(() => loadDetail(view), 250);
  } else if (data.kind === "tool_call" || data.kind === "tool_result") {
    renderTool(view, data);
  } else if (data.kind === "mcp_call") {
    renderMcp(data);
  } else if (data.kind === "barge_in") {
    $("notes").append(el("li", {}, at, `barge-in: the caller heard ${data.heard_ms} ms of the reply`));
  } else if (data.kind === "error") {
    $("notes").append(el("li", { class: "outcome-bad" }, at, `error ${data.code}: ${data.message}`));
  } else if (data.kind === "amd") {
    $("notes").append(el("li", {}, at, `answered by ${data.answered_by.replaceAll("_", " ")}`));
  } else if (data.kind === "dtmf") {
    $("notes").append(el("li", {}, at, `key ${data.digit} pressed`));
  } else if (data.kind === "supervisor") {
    $("notes").append(el("li", {}, at, "a supervisor hung up"));
  } else if (data.kind === "stream_resumed") {
    $("notes").append(el("li", {}, at, "the stream broke and went on on a new one (same session)"));
  } else if (data.kind === "ended") {
    view.ended = true;
    setTimeout(() => loadDetail(view), 300); // the final outcome, latency and recording
  }
  drawTimeline();
}

function renderTool(view, data) {
  let tool = view.tools.get(data.call_id);
  if (!tool) {
    tool = { node: el("li", { "data-call-id": data.call_id }), call: null, result: null };
    view.tools.set(data.call_id, tool);
    $("tools").append(tool.node);
  }
  if (data.kind === "tool_call") tool.call = data; else tool.result = data;
  const c = tool.call || data, r = tool.result;
  const outcome = r ? r.outcome : "running";
  const cls = !r ? "outcome-running" : r.outcome === "ok" ? "outcome-ok" : "outcome-bad";
  const took = r && r.duration_ms ? ` in ${r.duration_ms} ms` : "";
  tool.node.replaceChildren(
    el("span", { class: "at" }, clock(c.at)), el("strong", {}, c.name || data.name || "tool"),
    " ", el("span", { class: cls }, `${outcome}${took}`),
    el("code", {}, `arguments: ${c.arguments || ""}`),
    ...(r ? [el("code", {}, `output: ${r.output || ""}`)] : []),
  );
}

function renderMcp(data) {
  // One remote MCP call the model's server ran, or the gateway's answer to an approval request.
  const ok = data.outcome === "ok" || data.outcome === "approved";
  const took = data.duration_ms ? ` in ${Math.round(Number(data.duration_ms))} ms` : "";
  $("mcp").append(el("li", { "data-server": data.server || "", "data-name": data.name || "" },
    el("span", { class: "at" }, clock(data.at)),
    el("strong", {}, `${data.server || "?"} · ${data.name || "tool"}`),
    " ", el("span", { class: ok ? "outcome-ok" : "outcome-bad" }, `${data.outcome || ""}${took}`),
    el("code", {}, `arguments: ${data.arguments || ""}`),
    ...(data.output ? [el("code", {}, `output: ${data.output}`)] : []),
    ...(data.error ? [el("code", { class: "outcome-bad" }, `error: ${data.error}`)] : []),
  ));
}

// --- the timeline: one lane per party, drawn as SVG ----------------------------------------
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}

function drawTimeline() {
  const view = state.view;
  const box = $("timeline");
  if (!view || !view.call) return;
  const width = box.clientWidth || 600, left = 70, right = 10;
  const start = view.call.started_at;
  const end = view.call.ended_at || Math.max(Date.now(), ...view.events.map((e) => e.at));
  const span = Math.max(1000, end - start);
  const x = (t) => left + ((t - start) / span) * (width - left - right);
  const lanes = { caller: 22, assistant: 48, tools: 74, events: 100 };
  const parts = [];
  for (const [name, y] of Object.entries(lanes)) {
    parts.push(svg("text", { x: 4, y: y + 4 }, name));
    parts.push(svg("line", { x1: left, x2: width - right, y1: y, y2: y, stroke: "#dde1e8" }));
  }
  parts.push(svg("line", { x1: x(start), x2: x(start), y1: 10, y2: 112, stroke: "#1d2330" }));
  parts.push(svg("text", { x: x(start) + 2, y: 124 }, `start ${clock(start)}`));
  const previous = { caller: start, assistant: start };
  const turns = view.call.turns || [];
  for (const turn of turns) { // from the audio: exact
    parts.push(svg("rect", { x: x(turn.start), y: lanes[turn.role] - 6, height: 12, rx: 3,
      width: Math.max(3, x(turn.end) - x(turn.start)),
      fill: turn.role === "caller" ? "#2f6fdb" : "#0f9d76", opacity: 0.85 }));
    parts[parts.length - 1].append(svg("title", {}, `${turn.role} ${duration(turn.end - turn.start)}`));
  }
  for (const e of view.events) {
    if (e.kind === "transcript" && turns.length === 0) {
      const lane = e.role === "caller" ? "caller" : "assistant";
      // A turn's line ends when its transcript arrives; it began after the previous one.
      const from = Math.max(previous[lane], e.at - 4000);
      parts.push(svg("rect", { x: x(from), y: lanes[lane] - 6, height: 12, rx: 3,
        width: Math.max(3, x(e.at) - x(from)), fill: lane === "caller" ? "#2f6fdb" : "#0f9d76",
        opacity: 0.8 }, null));
      parts[parts.length - 1].append(svg("title", {}, `${lane}: ${e.text}`));
      previous[lane] = e.at;
    } else if (e.kind === "barge_in") {
      parts.push(svg("line", { x1: x(e.at), x2: x(e.at), y1: 10, y2: 108, stroke: "#d13b3b",
        "stroke-dasharray": "3 2" }));
      parts.push(svg("text", { x: x(e.at) + 2, y: lanes.events + 4 }, "barge-in"));
    } else if (e.kind === "stream_resumed") {
      parts.push(svg("line", { x1: x(e.at), x2: x(e.at), y1: 10, y2: 108, stroke: "#b06a00",
        "stroke-dasharray": "1 3" }));
      parts.push(svg("text", { x: x(e.at) + 2, y: lanes.events + 4 }, "stream resumed"));
    } else if (e.kind === "mcp_call") {
      const took = Number(e.duration_ms) || 0; // recorded when it ended
      parts.push(svg("rect", { x: x(e.at - took), y: lanes.tools - 6, height: 12, rx: 2,
        width: Math.max(4, x(e.at) - x(e.at - took)), fill: "#7a4fb5", opacity: 0.85 }));
      parts[parts.length - 1].append(svg("title", {}, `MCP ${e.server} · ${e.name}: ${e.outcome}`));
    } else if (e.kind === "error" || e.kind === "amd" || e.kind === "dtmf" || e.kind === "supervisor") {
      parts.push(svg("circle", { cx: x(e.at), cy: lanes.events, r: 4,
        fill: e.kind === "error" ? "#d13b3b" : "#687084" }));
      parts[parts.length - 1].append(svg("title", {}, e.kind));
    }
  }
  for (const tool of view.tools.values()) {
    const c = tool.call || tool.result;
    const until = tool.result ? tool.result.at : end;
    parts.push(svg("rect", { x: x(c.at), y: lanes.tools - 6, height: 12, rx: 2,
      width: Math.max(4, x(until) - x(c.at)), fill: "#b06a00", opacity: tool.result ? 0.85 : 0.45 }));
    parts[parts.length - 1].append(svg("title", {}, c.name || "tool"));
  }
  if (view.call.ended_at) {
    parts.push(svg("line", { x1: x(end), x2: x(end), y1: 10, y2: 112, stroke: "#1d2330" }));
    parts.push(svg("text", { x: Math.max(left, x(end) - 80), y: 124 }, `end ${clock(end)}`));
  }
  box.replaceChildren(...parts);
}

// --- start ------------------------------------------------------------------------------------
function start() {
  $("sign-in").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  refreshList();
  clearInterval(state.listTimer);
  state.listTimer = setInterval(refreshList, LIST_EVERY_MS);
  clearInterval(state.clockTimer);
  state.clockTimer = setInterval(() => { if (state.view && !state.view.ended) drawTimeline(); }, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("console-token", state.token);
    const probe = await fetch("/api/calls?limit=1", { headers: { Authorization: `Bearer ${state.token}` } });
    if (probe.status === 401) { signedOut("That token was refused."); return; }
    start();
  });
  $("sign-out").addEventListener("click", () => signedOut(""));
  $("live-only").addEventListener("change", () => renderList([...state.calls.keys()]));
  $("hangup").addEventListener("click", async () => {
    if (!state.selected) return;
    await api(`/api/calls/${state.selected}/hangup`, { method: "POST" });
  });
  // An address with #token=... pasted into a tab already showing the page.
  window.addEventListener("hashchange", () => {
    const token = takeToken();
    if (token && token !== state.token) { state.token = token; start(); }
  });
  state.token = takeToken();
  if (state.token) start(); else signedOut("");
});
