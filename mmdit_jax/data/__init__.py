"""Data: toy distributions with exact scores, the built-in captioned ``shapes`` images and their captions, TFDS
builders, the data-set registry, the grain input pipeline and the on-disk text-embedding cache."""
