"""TFDS builders (ArrayRecord format, no TensorFlow needed): shapes, digits, toy2d."""
