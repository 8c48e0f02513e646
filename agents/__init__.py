"""RLlib glue and the command line of commformer: the only package that imports ray."""
