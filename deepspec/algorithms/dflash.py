"""DFlash: the DSpark block drafter without its Markov and confidence heads, trained with CE only.

It is the ``DSpark`` architecture (same model class and saved fields) with ``markov_rank == 0`` and no
confidence head, which is how a saved config is recognised as DFlash (:data:`deepspec.draft_specs.DFLASH`).
"""

from __future__ import annotations

from deepspec.algorithms.dspark import block_algorithm
from deepspec.draft_specs import DFLASH

ALGORITHM = block_algorithm(DFLASH, heads=False)
