"""The registry of compression techniques.

Each technique is one small module defining one ``Technique`` subclass; registering it
here makes it appear in ``--policy`` JSON, in the test matrix and on the page's technique
panel (which renders each technique's ``params``). Adding a technique = a module, a line
in ``REGISTRY``, a line in docs/techniques.md.
"""

from __future__ import annotations

from .base import Param, PolicyError, Technique
from .chunks import Chunks
from .collapse import Collapse
from .compresskv import CompressKV
from .duo import Duo
from .entropy_bits import EntropyBits
from .h2o import H2O
from .importance import Importance
from .knorm import KNorm
from .pyramidkv import PyramidKV
from .quant import Quant
from .snapkv import SnapKV
from .streaming import Streaming
from .tova import TOVA

#: technique name (the key in a policy JSON object) → technique
REGISTRY: dict[str, Technique] = {
    t.name: t for t in (Quant(), EntropyBits(), Collapse(), Streaming(), H2O(), SnapKV(), PyramidKV(), CompressKV(),
                        TOVA(), KNorm(), Duo(), Importance(), Chunks())
}

__all__ = ["Param", "PolicyError", "REGISTRY", "Technique"]
