import os

# Tests run on the CPU; keep XLA from grabbing all cores for intra-op threads beyond what the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
