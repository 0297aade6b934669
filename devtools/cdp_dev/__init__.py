"""Developer tools, never shipped to Lambda.

The cdp command, the local stack, the platform sandbox, in-memory adapters, demo, stories,
replay, sender and redrive.
"""
