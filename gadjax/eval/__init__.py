"""Evaluation of a student checkpoint (issue 7, SPEC.md "Data and evaluation").

Host-side metric modules (``rouge``, ``lengths``, ``markers``, ``judge``, ``distribution``: marker gap
and the classifier two-sample test) import no model code; only ``generation`` (greedy or sampled
responses through the rollout sampler), ``whitebox`` (reverse KL / teacher NLL from both models'
weights) and ``runner`` (``evaluate_model``) touch jax. The CLI is ``python -m gadjax.evaluate``.
"""
