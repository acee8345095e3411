"""Persistence: engine, typed tables, repositories, migrations.

The statements of the hot path are `Prepared` (compiled once, run on the driver's
cursor); rows nobody reads back in the same transaction go to the writer's
`Deferred` buffer. Both live in gateway.store.fast, which only this package
imports: other modules use the names exported here.
"""

from gateway.store.fast import (
    FAST_PATH_OPTION,
    Deferred,
    Prepared,
    deferred_writes,
    prepared_statements,
)

__all__ = ["FAST_PATH_OPTION", "Deferred", "Prepared", "deferred_writes",
           "prepared_statements"]
