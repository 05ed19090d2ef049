"""The study (`make study`, issue 12): GAD vs seqkd at equal generator updates, with the paper's ablations,
on the demo's embedded teacher. It sits above gadjax.demo (it reuses the demo's teacher, stages and
evaluation); the demo never imports it. ``python -m gadjax.study`` runs it (gadjax.study.cli)."""

from gadjax.study.results import Results, split_validation
from gadjax.study.runner import DEFAULT_CONFIG, Study

__all__ = ["DEFAULT_CONFIG", "Results", "Study", "split_validation"]
