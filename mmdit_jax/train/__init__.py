"""Training: a minimal scan-compiled fitter for small models (the full trainer is built on top later)."""
