"""The naive FastAPI SSE hub (one redis pub/sub per client)."""
