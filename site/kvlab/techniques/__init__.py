"""The registry of compression techniques.

Each technique is one small module defining one ``Technique`` subclass; registering it
here makes it appear in ``--policy`` JSON, in the test matrix and on the page's technique
panel (which renders each technique's ``params``). Adding a technique = a module, a line
in ``REGISTRY``, a README line.
"""

from __future__ import annotations

from .base import Param, PolicyError, Technique
from .quant import Quant

#: technique name (the key in a policy JSON object) → technique
REGISTRY: dict[str, Technique] = {t.name: t for t in (Quant(),)}

__all__ = ["Param", "PolicyError", "REGISTRY", "Technique"]
