"""Helpers shared by the test suite: free ports, real processes, SSE clients."""
