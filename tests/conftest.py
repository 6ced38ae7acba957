import os

# The suite is mostly compilation (~75% of a typical test's time on 2 cores): XLA's CPU backend
# compiles ~25% faster with its older fusion emitters, and the tests' results do not depend on
# them.  The library keeps XLA's defaults.  (Lower LLVM optimisation levels would halve the
# suite, but at levels 0 and 1 the Gaussian-mixture gradients of `test_gaussians.py` come out
# NaN: not understood yet, so not used.)
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_cpu_use_fusion_emitters=false"]).strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
