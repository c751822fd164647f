"""Data: toy distributions with exact scores; TFDS builders and the grain pipeline (training issue)."""
