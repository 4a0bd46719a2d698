"""Theory made executable: classification of attention polynomials and explicit constructions.

* :func:`analyze` — complexity and expressivity of any polynomial (DESIGN §1.4–§1.5);
* :mod:`.constructions` — hand-set one-layer, one-head models that provably solve r-fold
  function composition and Match3 on the token layouts of :mod:`polyattn.tasks`;
* :mod:`.measure` — time the planned exact algorithm over n and fit the exponent.

Imports only ``polynomial``, ``planning``, ``tasks``, ``functional`` and ``ops`` (DESIGN §3).
"""

from .analyze import AnalysisReport, analyze
from .classify import Claim

__all__ = ["AnalysisReport", "Claim", "analyze"]
