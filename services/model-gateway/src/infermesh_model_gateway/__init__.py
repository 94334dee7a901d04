"""infermesh model gateway (see services/model-gateway/README.md)."""
