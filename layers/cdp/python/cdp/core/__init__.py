"""The pure core: events, the profile and its fold, the segment language and the engine. No AWS, no I/O."""
