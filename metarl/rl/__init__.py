"""Meta-reinforcement learning on the shared core: episodes and their baselines, policies (a
network and a distribution head), the policy-gradient losses, TRPO, the MAML-TRPO meta-objective
and its accelerator, the learners the trainer drives, adaptation-curve evaluation, and sampling
(:mod:`metarl.rl.sampling`: local, worker processes, Ray).

Each module imports only modules of the layers above it (``tests/test_import_graph.py`` checks
that ``metarl`` has no import cycle)::

    episodes, policies, trpo
    baselines, sampling
    losses
    mlp_accelerator
    maml_trpo
    learners
    evaluation
"""
