"""Finding, loading and guarding modules.

Installed is not enabled: :func:`installed_modules` reads entry-point metadata without importing
anything; :meth:`ModuleHost.load` imports only the modules the config names.  Every hook
implementation is wrapped in a guard: an exception is logged (once per module and hook, then
rate limited), counted, and returns None so the other modules still run; after
``QUARANTINE_AFTER`` consecutive failures the module is unregistered and reported.
"""

from __future__ import annotations

import importlib.metadata as md
import time
from typing import Any, Callable

import attrs
import pluggy
import structlog

from . import hookspecs

GROUP = "hostsflow.modules"
QUARANTINE_AFTER = 10  # consecutive failures of one module before it is unregistered
LOG_EVERY = 60.0  # seconds between repeated error logs for the same module and hook

log = structlog.get_logger("hostsflow.modules")


@attrs.define
class ModuleInfo:
    """An installed module, as its entry point describes it (nothing imported)."""

    name: str
    value: str
    distribution: str
    version: str
    entry_point: Any = attrs.field(repr=False, eq=False, default=None)


def installed_modules() -> dict[str, ModuleInfo]:
    """Every module in the ``hostsflow.modules`` entry-point group, by name.

    Two distributions offering the same name: the first is kept and the clash logged."""
    found: dict[str, ModuleInfo] = {}
    for ep in md.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        info = ModuleInfo(
            ep.name,
            ep.value,
            dist.metadata["Name"] if dist else "?",
            dist.version if dist else "?",
            ep,
        )
        if ep.name in found and found[ep.name].distribution != info.distribution:
            log.warning(
                "module_name_clash", module=ep.name, kept=found[ep.name].distribution,
                ignored=info.distribution,
            )
            continue
        found[ep.name] = info
    return found


class ModuleLoadError(Exception):
    """A module could not be imported or does not fit the hook specs."""

    def __init__(self, module: str, distribution: str, reason: str) -> None:
        super().__init__(f"module '{module}' ({distribution}): {reason}")
        self.module, self.distribution, self.reason = module, distribution, reason


def instantiate(obj: Any) -> Any:
    """An entry point names a module class (instantiated once per agent) or a module object."""
    return obj() if isinstance(obj, type) else obj


@attrs.define
class ModuleState:
    """What the host knows about one registered module."""

    name: str
    plugin: Any
    distribution: str = "hostsflow"
    errors: int = 0
    consecutive: int = 0
    quarantined: bool = False
    last_logged: dict[str, float] = attrs.Factory(dict)


class ModuleHost:
    """A pluggy manager for one agent, with guards and quarantine.

    Tests build one with explicit module objects (:meth:`register`); the agent adds the
    entry-point modules the config names (:meth:`load`)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.states: dict[str, ModuleState] = {}
        self.on_change = on_change
        self.clock: Callable[[], float] = time.monotonic

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # ------------------------------------------------------------ registration

    def register(self, name: str, plugin: Any, distribution: str = "hostsflow") -> Any:
        """Register a module object under ``name``; refuse one whose hooks match no spec."""
        plugin = instantiate(plugin)
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):  # pluggy leaves it half registered
                self.pm.unregister(plugin)
            raise ModuleLoadError(name, distribution, _first_line(exc)) from None
        try:
            self._check_specs(name, plugin, distribution)
        except ModuleLoadError:
            self.pm.unregister(plugin)
            raise
        state = ModuleState(name, plugin, distribution)
        self.states[name] = state
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not impl.hookwrapper and not impl.wrapper:
                    impl.function = self._guard(state, caller.name, impl.function)
        if self.on_change:
            self.on_change()
        return plugin

    def _check_specs(self, name: str, plugin: Any, distribution: str) -> None:
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.spec is None:
                raise ModuleLoadError(name, distribution,
                                      f"implements unknown hook {caller.name}")
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    extra = set(impl.argnames) - set(caller.spec.argnames)
                    if extra:
                        raise ModuleLoadError(
                            name, distribution,
                            f"{caller.name} takes unknown arguments {sorted(extra)}"
                        )

    def load(self, info: ModuleInfo) -> Any:
        """Import an installed module and register it; ModuleLoadError names its distribution."""
        try:
            obj = info.entry_point.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is the module's fault
            raise ModuleLoadError(info.name, info.distribution, f"import failed: {exc!r}") from exc
        if not _hook_names(obj):
            raise ModuleLoadError(
                info.name, info.distribution,
                f"{info.value} implements no hostsflow hook (are the methods decorated with "
                "@hostsflow.hookimpl?)",
            )
        try:
            return self.register(info.name, obj, info.distribution)
        except ModuleLoadError as exc:
            raise ModuleLoadError(info.name, info.distribution, exc.reason) from None
        except Exception as exc:  # noqa: BLE001
            raise ModuleLoadError(info.name, info.distribution, repr(exc)) from exc

    def unregister(self, name: str) -> None:
        state = self.states.get(name)
        if state and self.pm.is_registered(state.plugin):
            self.pm.unregister(state.plugin)
        if self.on_change:
            self.on_change()

    # ------------------------------------------------------------ guards

    def _guard(self, state: ModuleState, hook: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any) -> Any:
            try:
                result = fn(*args)
            except Exception as exc:  # noqa: BLE001 - containment is the point
                self._failed(state, hook, exc)
                return None
            state.consecutive = 0
            return result

        guarded.__wrapped__ = fn  # type: ignore[attr-defined]
        return guarded

    def _failed(self, state: ModuleState, hook: str, exc: BaseException) -> None:
        state.errors += 1
        state.consecutive += 1
        now = self.clock()
        if now - state.last_logged.get(hook, -1e9) >= LOG_EVERY:
            state.last_logged[hook] = now
            log.error(
                "module_error", module=state.name, hook=hook, error=repr(exc),
                errors=state.errors, exc_info=exc,
            )
        if state.consecutive >= QUARANTINE_AFTER and not state.quarantined:
            state.quarantined = True
            log.error(
                "module_quarantined", module=state.name, distribution=state.distribution,
                consecutive_failures=state.consecutive,
            )
            self.unregister(state.name)

    # ------------------------------------------------------------ fast path

    def bound_impls(self, hook: str, **fixed: Any) -> tuple[Callable[..., Any], ...]:
        """The (guarded) implementations of ``hook`` as callables taking the remaining
        arguments positionally, in pluggy's call order.  Used for per-sample hooks so a sample
        costs a plain function call per implementation, not a pluggy dispatch."""
        caller = getattr(self.pm.hook, hook)
        spec_args = list(caller.spec.argnames)
        free = [a for a in spec_args if a not in fixed]
        out = []
        for impl in reversed(caller.get_hookimpls()):
            names = impl.argnames
            fn = impl.function
            if list(names) == ["agent"] + free[: len(names) - 1] and "agent" in fixed:
                agent = fixed["agent"]
                out.append(_partial_first(fn, agent))
            elif all(n in free for n in names) and list(names) == free[: len(names)]:
                out.append(fn)
            else:
                out.append(_by_name(fn, names, fixed, free))
        return tuple(out)


def _hook_names(obj: Any) -> list[str]:
    """The names of ``obj``'s attributes marked with ``@hostsflow.hookimpl``."""
    marker = f"{hookspecs.PROJECT}_impl"
    return [n for n in dir(obj) if hasattr(getattr(obj, n, None), marker)]


def implemented_hooks(plugin: Any) -> list[str]:
    """The hooks a module object (or class) implements, sorted (``hostsflow modules -v``)."""
    return sorted(_hook_names(plugin))


def _first_line(exc: BaseException) -> str:
    """pluggy's validation messages span lines; keep them on one for logs and tables."""
    return " ".join(str(exc).split())


def _partial_first(fn: Callable[..., Any], first: Any) -> Callable[..., Any]:
    def call(*rest: Any) -> Any:
        return fn(first, *rest)

    return call


def _by_name(
    fn: Callable[..., Any], names: tuple[str, ...], fixed: dict[str, Any], free: list[str]
) -> Callable[..., Any]:
    def call(*rest: Any) -> Any:
        values = dict(fixed)
        values.update(zip(free, rest))
        return fn(*(values[n] for n in names))

    return call
