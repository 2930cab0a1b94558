"""One outer TRPO step of a trained MAML run, taken from the same meta-batch with each kind of
curvature product: the paper's finite differences (rllab's, base eps 1), Gauss-Newton and
exact double backprop. Prints, per meta-batch, each step's initial step size, line-search
fraction, norm, KL and surrogate improvement, and the cosine between the steps.

    python results/halfcheetah_vel/curvature_compare.py RUN [--batches 3] [--seed 0] [--init]

``--init`` takes the step at the run's initial weights (those of its seed) instead of its last
checkpoint. Run it from the repository root for ``paper_dt.py`` runs (their env file is named
relative to it). Cost: one meta-iteration's sampling and three TRPO steps per batch.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

import metarl
from metarl.rl.learners import MAMLTRPOLearner, torch_threads
from metarl.rl.maml_trpo import meta_trpo_step
from metarl.rl.trpo import flatten_params
from metarl.rngs import Rngs

METHODS = ("finite_difference", "gauss_newton", "exact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", action="store_true", help="the run's initial weights")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = metarl.load_run(args.run)
    config = dataclasses.replace(
        run.config,
        device="cpu",
        sampler=dataclasses.replace(run.config.sampler, backend="local", num_workers=1),
    )
    learner = MAMLTRPOLearner(config, Rngs.from_seed(config.seed))
    if not args.init:
        state = torch.load(run.path / "checkpoint.pt", weights_only=True)["learner"]
        learner.load_state_dict(state)
    rngs = Rngs.from_seed(args.seed)
    theta = learner.params
    flat_theta = flatten_params(theta)
    at = "initial weights" if args.init else f"iteration {run.iteration}"
    print(f"{args.run} at {at}: |theta| = {float(flat_theta.norm()):.2f}")
    for b in range(args.batches):
        batch, adaptation, _ = learner.meta_batch(rngs)
        steps = {}
        print(f"batch {b}: post-update return {float(batch.valid.returns.mean()):.1f}")
        for method in METHODS:
            trpo = dataclasses.replace(config.trpo, hvp=method)
            with torch_threads(1):
                new, stats = meta_trpo_step(
                    learner.policy, theta, batch, trpo, adaptation=adaptation
                )
            steps[method] = flatten_params(new) - flat_theta
            print(
                f"  {method:17s} beta {stats.initial_step_size:.3f}  fraction "
                f"{stats.step_fraction:.3f}  |step| {stats.step_norm:.4f}  kl {stats.kl_after:.5f}"
                f"  surrogate {stats.loss_before:.5f} -> {stats.loss_after:.5f}"
            )
        cos = torch.nn.functional.cosine_similarity
        fd = steps["finite_difference"]
        for method in METHODS[1:]:
            cosine = float(cos(fd, steps[method], dim=0))
            print(f"  cosine(finite_difference, {method}) {cosine:.4f}")
    learner.close()


if __name__ == "__main__":
    main()
