"""One module per registered experiment; importing this package registers them all.

Every public module of this package (a name without a leading underscore) is imported here, so a
new experiment registers itself by adding its file: no list to keep up to date.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))

for _name in __all__:
    importlib.import_module(f"{__name__}.{_name}")
