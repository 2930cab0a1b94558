"""The supervised path (sinusoid regression, Omniglot) on the shared ``metarl.adapt``."""
