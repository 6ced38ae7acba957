import os

# The suite is mostly compilation (~75% of a typical test's time on 2 cores): XLA's CPU backend
# compiles about twice as fast with its older fusion emitters and without LLVM optimisation
# (full suite 842-902 s -> ~440 s).  Results must not depend on either, and the library keeps
# XLA's defaults.  (Compiling this way found gradients that did: `sdot_jax._extremes`.)
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"]
).strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
