"""The optimisation core: candidate selection, trial evaluation, constrained Bayesian search."""
