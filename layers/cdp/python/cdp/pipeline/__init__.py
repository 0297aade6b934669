"""Orchestration over the ports: ingest, changes, the timers sweep and the integrations fan-out."""
