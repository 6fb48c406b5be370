"""Comparison peers: nginx+nchan and a naive FastAPI+redis SSE hub."""
