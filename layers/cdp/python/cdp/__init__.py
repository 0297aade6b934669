"""Real-time behavioural segmentation core: events, profiles, segments."""
