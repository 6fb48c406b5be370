// The browser's own EventSource against the hub, read by test_browser_eventsource.py
// through the DevTools protocol.
//
// openStream(name, url, types) opens an EventSource and records, in order, what
// it reports: {kind: "open"}, {kind: "error", readyState}, and
// {kind: "message"|"typed", type, data, lastEventId, origin}: onmessage
// records untyped events, a listener per type in `types` (and "hub.gap")
// records typed ones.
const streams = {};

window.openStream = (name, url, types = []) => {
  const log = [];
  const es = new EventSource(url);
  const record = (kind) => (e) =>
    log.push({ kind, type: e.type, data: e.data, lastEventId: e.lastEventId, origin: e.origin });
  es.onopen = () => log.push({ kind: "open" });
  es.onerror = () => log.push({ kind: "error", readyState: es.readyState });
  es.onmessage = record("message");
  for (const type of new Set([...types, "hub.gap"])) es.addEventListener(type, record("typed"));
  streams[name] = { es, log };
  return true;
};

window.readLog = (name) => streams[name].log;
window.closeStream = (name) => streams[name].es.close();
window.pageReady = true;
