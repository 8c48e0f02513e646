"""RLlib glue and the command line of commformer: the only package that imports ray."""

import os

# Read by the OpenMP runtime when torch loads, hence here: before anything in this package imports torch.
# With `resources.learner_threads` > 1 the update's threads wait for each other at every parallel region, and
# OpenMP's default is to wait spinning: when another busy process holds a core, each wait then lasts a
# scheduler time slice. One Adam step of the SMAX policy on two threads, a second busy process on this 2-core
# machine: 1,068 ms spinning, 47 ms passive, 60 ms on one thread (docs/DESIGN.md, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
