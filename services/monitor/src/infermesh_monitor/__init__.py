"""infermesh monitor (see services/monitor/README.md)."""
