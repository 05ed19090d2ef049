"""Evaluation of a student checkpoint (issue 7, SPEC.md "Data and evaluation").

Host-side metric modules (``rouge``, ``lengths``, ``markers``, ``judge``) import no model code; only
``generation`` (greedy responses through the rollout sampler) and ``runner`` (``evaluate_model``) touch
jax. The CLI is ``python -m gadjax.evaluate``.
"""
