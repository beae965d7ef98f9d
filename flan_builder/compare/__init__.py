"""``flan compare``: every PEFT method and in-context learning on the same held-out job, one report."""
