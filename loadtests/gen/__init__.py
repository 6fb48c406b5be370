"""Fast SSE load generator: uvloop + raw asyncio protocols, runnable as several processes.

Modules:
  target     -- how to talk to one system (subscribe path, publish request).
  stats      -- latency histogram shared by all subscribers of one process.
  sse        -- the subscriber protocol (scans raw bytes for the "t": marker).
  publisher  -- keep-alive HTTP/1.1 publisher (open-loop rate or closed-loop window).
  worker     -- one generator process holding many subscribers.
  pool       -- the coordinator that drives several worker processes.
  ceiling    -- measures the generator's own ceiling against a trivial server.
"""
