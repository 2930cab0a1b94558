"""The README's "Your own task env" example (its ``# file: mine.py`` block), read from the README
itself, so that the tests built on it run what a user reads."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
ENV_ID = "mine/LineTarget-v0"  # the id the example registers


def own_env_source() -> str:
    """The source of the README's ``mine.py``."""
    text = README.read_text()
    match = re.search(r"^```python\n(# file: mine\.py\n.*?)^```", text, flags=re.S | re.M)
    assert match is not None, "README.md lost its `# file: mine.py` example"
    assert f'gym.register("{ENV_ID}"' in match.group(1)
    return match.group(1)


def own_env_module(name: str = "readme_mine") -> types.ModuleType:
    """``mine.py`` imported as the module ``name`` (in ``sys.modules``, so its tasks pickle)."""
    if name not in sys.modules:
        module = types.ModuleType(name)
        sys.modules[name] = module  # before it runs: its dataclass looks its module up there
        try:
            exec(compile(own_env_source(), "README.md (mine.py)", "exec"), module.__dict__)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
