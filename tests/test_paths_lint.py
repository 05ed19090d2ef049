"""The modules that handle a run's user-given paths (run_dir, checkpoint.dir, init_from, eval outputs,
data and model paths) go through gadjax.paths, which reaches gs:// as well as local disks: a direct
``open()`` / ``os.path`` / ``os.makedirs`` / ``glob`` call there would silently turn ``gs://b/run`` into
``<cwd>/gs:/b/run``. Modules that need real local files (SQLite, appends, safetensors, memory maps)
get them from the path layer (gadjax.paths.localize / local_mirror, gadjax.run_dir, the export staging
of gadjax.storage) and are not listed here."""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_PATH_MODULES = (
    "gadjax/checkpoint.py",
    "gadjax/config.py",
    "gadjax/trainer/loop.py",
    "gadjax/trainer/state.py",
    "gadjax/trainer/evaluation.py",
    "gadjax/trainer/build.py",
    "gadjax/trainer/validation.py",
    "gadjax/eval/runner.py",
)
FORBIDDEN = {
    ("open",),
    ("os", "open"),
    ("os", "makedirs"),
    ("os", "replace"),
    ("os", "listdir"),
    ("os", "remove"),
    ("os", "unlink"),
    ("os", "path", "exists"),
    ("os", "path", "isdir"),
    ("os", "path", "isfile"),
    ("os", "path", "abspath"),
    ("os", "path", "join"),
    ("glob", "glob"),
    ("shutil", "rmtree"),
    ("shutil", "copytree"),
}


def _dotted(node: ast.AST) -> tuple[str, ...]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return tuple(reversed(parts))


@pytest.mark.parametrize("module", USER_PATH_MODULES)
def test_user_paths_go_through_the_path_layer(module):
    with open(os.path.join(REPO, module), encoding="utf-8") as f:
        tree = ast.parse(f.read(), module)
    calls = [
        f"{module}:{node.lineno}: {'.'.join(_dotted(node.func))}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _dotted(node.func) in FORBIDDEN
    ]
    assert not calls, "use gadjax.paths instead:\n" + "\n".join(calls)


def test_the_lint_finds_a_direct_call(tmp_path):
    tree = ast.parse("import os\nos.path.join(run_dir, 'x')\nopen(p)\n")
    calls = [_dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    found = [c for c in calls if c in FORBIDDEN]
    assert found == [("os", "path", "join"), ("open",)]
