"""Adapters from the core's ports to AWS services. Clients are passed in, never created at import."""
