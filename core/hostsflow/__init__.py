"""hostsflow: a host sFlow agent with modules.

The public API for module authors:

- :data:`hookimpl`: decorate your module's hook methods with it.
- :class:`AgentAPI`: what a module may use of the ``agent`` its hooks get (type your
  ``agent`` parameters with it).
- :mod:`hostsflow.hookspecs`: the hooks, with when each is called and how results combine.
- :mod:`hostsflow.samples`: ``FlowSample``, ``DataSource`` and the well-known stash keys.
- :mod:`hostsflow.sflow.records`: the record classes, and ``flow_record``/``counter_record``
  to define your own.
- :mod:`hostsflow.config`: ``option`` to declare config keys.
- :mod:`hostsflow.testing`: the testing kit.
"""

from . import logsetup  # noqa: F401 - first: imports structlog without rich (see there)
from .hookspecs import AgentAPI, hookimpl

__version__ = "0.1.0"
__all__ = ["AgentAPI", "hookimpl", "__version__"]
