"""The collector: Segment's HTTP Tracking API in front of the events stream (requests, write keys, messages)."""
