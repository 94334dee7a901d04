"""infermesh data gateway (see services/data-gateway/README.md)."""
