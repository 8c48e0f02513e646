"""RLlib glue and the command line of commformer: the only package that imports ray."""

import os

# Read by the OpenMP runtime when torch loads, hence here: before anything in this package imports torch.
# With `resources.learner_threads` > 1 the update's threads wait for each other at every parallel region, and
# OpenMP's default is to spin a long while before sleeping: when another busy process holds a core, each wait
# then lasts a scheduler time slice (docs/DESIGN.md, "Threads"; the figures: `python -m benchmarks.update_threads`,
# docs/BENCHMARKS.md). A user's own choice stands.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
