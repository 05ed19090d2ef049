"""Black-box teacher: OpenAI-compatible client, persistent response cache, corpus collection.

Submodules: :mod:`~gadjax.teacher.config`, :mod:`~gadjax.teacher.cache`, :mod:`~gadjax.teacher.client`,
:mod:`~gadjax.teacher.collect` (CLI). Light imports only (no jax).
"""

from gadjax.teacher.cache import ResponseCache, cache_key
from gadjax.teacher.client import TeacherClient, TeacherError, TeacherResponse
from gadjax.teacher.config import TeacherConfig, TeacherConfigError

__all__ = [
    "ResponseCache",
    "TeacherClient",
    "TeacherConfig",
    "TeacherConfigError",
    "TeacherError",
    "TeacherResponse",
    "cache_key",
]
