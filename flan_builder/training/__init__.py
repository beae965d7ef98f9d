"""Held-out-cluster training: recipes, the PEFT family, and TRL's SFTTrainer (``[train]`` extra)."""
