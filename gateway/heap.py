"""Garbage collection in a long-running `deskgate serve` process.

After start-up a gateway holds about 110,000 Python objects that live as long as
the process: modules, the SQLAlchemy metadata and compiled statements, the
configuration, the filter set. CPython's full (generation 2) collection walks all
of them whenever enough new objects have survived (a quarter as many as there are
old ones: rare in steady traffic, common after a burst of connections or a
reload), and one took ~70 ms on the event loop of a 2-vCPU machine: every session
waits meanwhile. `settle()` moves what exists into the
permanent generation (gc.freeze), so a full collection walks only what was made
since. It is called once the listeners are up and again after a reload by SIGHUP
(which first puts everything back, so the previous configuration's cycles can
still be collected; that one collection pauses the process once). Reference
counting frees frozen objects as usual; only cyclic garbage among them (of
messages in flight at that moment, say) waits for the next settle().
"""

from __future__ import annotations

import gc


def settle() -> int:
    """Collect, then freeze everything that is left; returns how many objects are frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
