// ssehub's dashboard: the node's figures from /_hub/stats, a channel tail, a publish form.
// Plain JavaScript, no build step, nothing loaded from elsewhere. Every URL is relative
// to /ui, so the page works behind a proxy that serves the hub under a path.
"use strict";

const $ = (selector) => document.querySelector(selector);
const TAIL_MAX = 500;
const number = new Intl.NumberFormat("en");

function setState(el, state, text) {
  el.dataset.state = state;
  el.textContent = text || state;
}

// -- the node's figures ------------------------------------------------------

function ms(value) {
  if (value === null || value === undefined) return "-";
  return value < 1 ? `${value.toFixed(2)} ms` : `${number.format(Math.round(value * 10) / 10)} ms`;
}

function sparkline(values) {
  const max = Math.max(1, ...values);
  const step = 60 / Math.max(1, values.length - 1);
  $("#spark").setAttribute(
    "points",
    values.map((v, i) => `${(i * step).toFixed(2)},${(20 - (v / max) * 19).toFixed(2)}`).join(" "),
  );
  $("#sparkline").dataset.max = String(max);
}

function channelRows(top) {
  const body = $("#channels tbody");
  const rows = top.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.channel = c.channel;
    tr.dataset.subscribers = String(c.subscribers);
    if (c.channel === tail.channel) tr.className = "selected";
    for (const [text, cls] of [
      [c.channel, "mono"],
      [number.format(c.subscribers), "num"],
      [number.format(c.events_per_s), "num"],
      [c.last_id || "", "id mono"],
    ]) {
      const td = document.createElement("td");
      td.textContent = text;
      td.className = cls;
      tr.append(td);
    }
    tr.addEventListener("click", () => {
      $("#pub-channel").value = c.channel;
      tail.open(c.channel);
    });
    return tr;
  });
  body.replaceChildren(...rows);
  $("#no-channels").hidden = rows.length > 0;
}

function showFigures(f) {
  $("#node-broker").textContent = f.broker ? `${f.broker} broker` : "";
  setState($("#node-state"), f.ready ? "live" : "down", f.ready ? "live" : "not ready");
  $("#fig-streams").textContent = number.format(f.streams ?? 0);
  $("#fig-channels").textContent = number.format(f.channels ?? 0);
  $("#fig-events").textContent = number.format(f.events_per_s);
  $("#fig-deliveries").textContent = number.format(f.deliveries_per_s);
  const totals = f.totals || {};
  $("#tot-events").textContent = `${number.format(totals.events ?? 0)} in all`;
  $("#tot-events").dataset.total = String(totals.events ?? 0);
  $("#tot-deliveries").textContent = `${number.format(totals.deliveries ?? 0)} in all`;
  $("#tot-deliveries").dataset.total = String(totals.deliveries ?? 0);
  $("#fig-p99").textContent = ms(f.publish_p99_ms);
  $("#fig-delay").textContent = ms(f.delay_p99_ms);
  $("#fig-cuts").textContent = `${number.format(totals.slow_cut ?? 0)} / ${number.format(totals.gaps ?? 0)}`;
  $("#tot-lag").textContent = `loop lag ${ms(f.loop_lag_ms)}`;
  sparkline(f.deliveries_history || []);
  channelRows(f.top || []);
}

// A hub with credentials needs a token for its figures and private channels: open the page as
// /ui?access_token=<a publish token or an admin JWT>; it is sent as ?access_token= (EventSource
// cannot send headers), which the hub keeps out of its logs.
const pageToken = new URLSearchParams(location.search).get("access_token") || "";

function withToken(url) {
  return pageToken ? `${url}${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(pageToken)}` : url;
}

function watchNode() {
  const source = new EventSource(withToken("_hub/stats"));
  source.onopen = () => setState($("#node-state"), "live");
  source.onmessage = (e) => showFigures(JSON.parse(e.data));
  source.onerror = () => setState($("#node-state"), "reconnecting");
}

// -- the tail ------------------------------------------------------------------

const tail = {
  source: null,
  channel: null,
  paused: false,
  held: [],
  types: new Set(),

  open(channel, after = "") {
    this.close();
    this.channel = channel;
    $("#tail-channel").textContent = channel;
    for (const tr of document.querySelectorAll("#channels tbody tr")) {
      tr.classList.toggle("selected", tr.dataset.channel === channel);
    }
    setState($("#tail-state"), "connecting");
    // `after`: start from just after that id (the hub replays what came since).
    const resume = after ? `?last_event_id=${encodeURIComponent(after)}` : "";
    const source = new EventSource(withToken(`channels/${encodeURIComponent(channel)}/stream${resume}`));
    this.source = source;
    source.onopen = () => setState($("#tail-state"), this.paused ? "paused" : "live");
    source.onerror = () => {
      // EventSource reconnects by itself (with Last-Event-ID) unless the answer was final.
      const state = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
      setState($("#tail-state"), state);
      this.note(state === "closed" ? "stream closed" : "connection lost; reconnecting");
    };
    source.onmessage = (e) => this.add(e);
    source.addEventListener("hub.gap", (e) => this.add(e));
    for (const type of this.types) source.addEventListener(type, (e) => this.add(e));
  },

  close() {
    if (this.source) this.source.close();
    this.source = null;
    setState($("#tail-state"), "closed");
  },

  watchType(type) {
    if (!type || this.types.has(type) || type === "hub.gap" || type === "message") return;
    this.types.add(type);
    if (this.source) this.source.addEventListener(type, (e) => this.add(e));
    const field = $("#tail-types");
    field.value = [...this.types].join(", ");
  },

  add(e) {
    const entry = { type: e.type, id: e.lastEventId, data: e.data };
    if (this.paused) {
      this.held.push(entry);
      $("#tail-pause").textContent = `resume (${this.held.length})`;
      return;
    }
    this.show(entry);
  },

  show(entry) {
    const li = document.createElement("li");
    li.dataset.type = entry.type;
    li.dataset.id = entry.id;
    if (entry.type === "hub.gap") li.className = "gap";
    for (const [text, cls] of [
      [entry.type, "type"],
      [entry.id || "(no id)", "id"],
      [entry.data, "data"],
    ]) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      li.append(span);
    }
    const list = $("#tail");
    list.prepend(li);
    while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
  },

  note(text) {
    const li = document.createElement("li");
    li.className = "note";
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    $("#tail").prepend(li);
  },

  togglePause() {
    this.paused = !this.paused;
    const button = $("#tail-pause");
    button.setAttribute("aria-pressed", String(this.paused));
    if (this.paused) {
      button.textContent = "resume";
      if (this.source) setState($("#tail-state"), "paused");
    } else {
      button.textContent = "pause";
      for (const entry of this.held.splice(0)) this.show(entry);
      if (this.source && this.source.readyState === EventSource.OPEN) setState($("#tail-state"), "live");
    }
  },
};

// -- publishing ----------------------------------------------------------------

async function publish(form) {
  const out = $("#publish-result");
  out.className = "";
  const channel = form.channel.value.trim();
  const event = form.event.value.trim();
  const text = form.data.value;
  const headers = {};
  const token = form.token.value.trim() || pageToken;
  if (token) headers.Authorization = `Bearer ${token}`;
  let url = `channels/${encodeURIComponent(channel)}/events`;
  let body;
  if (form.kind.value === "json") {
    let data;
    try {
      data = JSON.parse(text);
    } catch (err) {
      out.className = "error";
      out.textContent = `not JSON: ${err.message}`;
      return;
    }
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(event ? { data, event } : { data });
  } else {
    headers["Content-Type"] = "text/plain; charset=utf-8";
    if (event) url += `?event=${encodeURIComponent(event)}`;
    body = text;
  }
  tail.watchType(event);
  try {
    const response = await fetch(url, { method: "POST", headers, body });
    const answer = await response.json();
    if (response.ok) {
      // A channel not tailed yet: tail it from just before this event, so that it shows.
      if (tail.channel !== channel) tail.open(channel, idBefore(answer.id));
      out.textContent = `published ${answer.id}`;
      out.dataset.id = answer.id;
    } else {
      out.className = "error";
      out.textContent = `${response.status} ${answer.error}: ${answer.detail}`;
    }
  } catch (err) {
    out.className = "error";
    out.textContent = `failed: ${err.message}`;
  }
}

// The id just before `id` ("ms-seq"): a resume from it starts with `id` itself.
function idBefore(id) {
  const [ms, seq] = id.split("-").map(BigInt);
  return seq > 0n ? `${ms}-${seq - 1n}` : `${ms - 1n}-18446744073709551615`;
}

// -- wiring --------------------------------------------------------------------

$("#open-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const channel = $("#open-channel").value.trim();
  $("#pub-channel").value = channel;
  tail.open(channel);
});
$("#tail-types").addEventListener("change", (e) => {
  for (const type of e.target.value.split(",")) tail.watchType(type.trim());
});
$("#tail-pause").addEventListener("click", () => tail.togglePause());
$("#tail-clear").addEventListener("click", () => $("#tail").replaceChildren());
$("#publish-form").addEventListener("submit", (e) => {
  e.preventDefault();
  publish(e.target);
});
watchNode();
