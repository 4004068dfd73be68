"""Wrapping one function of the lab inside the processes a test starts (a worker, its job's process), without a
hook in the lab's own code: a sitecustomize.py on their PYTHONPATH installs an import hook that replaces
MODULE.ATTRIBUTE, as soon as MODULE is imported, by `_wrapped(real)`, when the environment variable ENV is set.

The wrapper's source (`wrapper`, defining `_wrapped(real)`) reads ENV itself for what to do."""
from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import ROOT

_FINDER = '''

class _WrapOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != {module!r}:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            setattr(module, {attribute!r}, _wrapped(getattr(module, {attribute!r})))

        spec.loader.exec_module = exec_and_wrap
        return spec


if os.environ.get({env!r}):
    sys.meta_path.insert(0, _WrapOnImport())
'''


def hooked_environment(folder: Path, module: str, attribute: str, env: str, wrapper: str) -> dict[str, str]:
    """Write the sitecustomize.py into `folder` and return an environment whose Python processes load it."""
    folder.mkdir(parents=True, exist_ok=True)
    source = "import importlib.abc, importlib.util, os, sys\n" + wrapper + _FINDER.format(
        module=module, attribute=attribute, env=env)
    (folder / "sitecustomize.py").write_text(source)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
