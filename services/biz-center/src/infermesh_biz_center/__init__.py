"""infermesh business center (see services/biz-center/README.md)."""
