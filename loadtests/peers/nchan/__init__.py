"""nginx + nchan peer: config template and start/stop helper."""
