"""Zero-shot evaluation on the held-out cluster (``[eval]`` extra)."""
