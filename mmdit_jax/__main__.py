from mmdit_jax.cli import run

run()
