"""Delivery to email and ad platforms: one module per platform, each a Destination for cdp.pipeline.fanout."""
