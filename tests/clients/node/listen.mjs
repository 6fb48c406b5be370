// Node's `eventsource` package against the hub, driven by test_node_eventsource.py.
//
//   node listen.mjs URL [TYPE ...]
//
// Prints one JSON line per thing the EventSource reports: {"kind": "open"},
// {"kind": "message"|"typed", "type", "data", "lastEventId"} and
// {"kind": "error", "readyState", "message", "code"}. A listener is added for
// each TYPE (and always for "hub.gap"); untyped events reach onmessage.
// Ends (closing the EventSource) when its standard input closes.
import { EventSource } from "eventsource";

const [url, ...types] = process.argv.slice(2);
const print = (record) => process.stdout.write(JSON.stringify(record) + "\n");

const es = new EventSource(url);
es.onopen = () => print({ kind: "open" });
es.onerror = (e) => print({ kind: "error", readyState: es.readyState, message: e.message ?? null, code: e.code ?? null });
es.onmessage = (e) => print({ kind: "message", type: e.type, data: e.data, lastEventId: e.lastEventId });
for (const type of new Set([...types, "hub.gap"])) {
  es.addEventListener(type, (e) => print({ kind: "typed", type: e.type, data: e.data, lastEventId: e.lastEventId }));
}

process.stdin.resume();
process.stdin.on("end", () => {
  es.close();
  process.exit(0);
});
