"""Command lines: ``hostsflowd`` (the agent) and ``hostsflow`` (decode, modules, config, status,
view, top).

Config mistakes print ``FILE:LINE: message`` on stderr and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, Sequence

from . import __version__
from .agent import Agent, recording_agent
from .run_loop import run_agent
from .bootstrap import load_file
from .config.parser import ConfigError
from .health import StatusFile, read_status
from .logsetup import configure_logging
from .modules import ModuleHost, ModuleLoadError, installed_modules

DEFAULT_CONFIG = "/etc/hsflowd.conf"
DEFAULT_STATUS = "/run/hostsflow/status.json"
STATUS_EVERY = 5  # seconds between status file updates
EXIT_CONFIG = 2


# ================================================================ hostsflowd


def agent_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hostsflowd", description="host sFlow agent")
    p.add_argument("-f", "--config", default=DEFAULT_CONFIG, help="config file (%(default)s)")
    p.add_argument("-d", "--debug", action="store_true", help="debug logging")
    p.add_argument("--test", action="store_true",
                   help="run the configured modules for one polling round, print what would be "
                        "sent (decoded), send nothing")
    p.add_argument("--test-seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    p.add_argument("--status-file", default=DEFAULT_STATUS,
                   help="where to write health counters (%(default)s); '' for none")
    p.add_argument("--json", action="store_true", help="with --test: one JSON object per datagram")
    p.add_argument("-u", "--user", default="nobody",
                   help="user to run as after start-up when dropPriv is on (%(default)s)")
    p.add_argument("-P", "--keep-root", action="store_true",
                   help="do not drop root after start-up (as hsflowd -P)")
    p.add_argument("-V", "--version", action="version", version=f"hostsflowd {__version__}")
    args = p.parse_args(argv)
    configure_logging(debug=args.debug)
    try:
        loaded = load_file(args.config, require_collector=not args.test)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    if args.test:
        return _run_test(loaded.config, loaded.host, args.test_seconds, args.json)

    agent = Agent(loaded.config, loaded.host,
                  user=None if args.keep_root else args.user)
    if args.status_file:
        _write_status_periodically(agent, args.status_file)

    def reload() -> Any:
        new = load_file(args.config)
        for name in set(new.host.states) - set(agent.host.states):
            agent.log.warning("reload_new_module_needs_restart", module=name)
        return new.config

    asyncio.run(run_agent(agent, reload=reload))
    return 0


def _write_status_periodically(agent: Agent, path: str) -> None:
    from .hookspecs import hookimpl

    status_file = StatusFile(path)

    class StatusWriter:
        @hookimpl
        def sflow_tock(self, agent: Agent, now: float) -> None:
            if agent.seconds % STATUS_EVERY == 0:
                status_file.write(_status(agent))

        @hookimpl(trylast=True)  # after every module's own final counts
        def sflow_final(self, agent: Agent) -> None:
            status_file.write(_status(agent))
            status_file.close()

    agent.host.register("status", StatusWriter())


def _status(agent: Agent) -> dict[str, Any]:
    sink = agent.sink
    return {
        "time": time.time(),
        "agent_address": agent.address,
        "datagrams": agent.exporter.datagrams,
        "samples_queued": agent.exporter.samples,
        "send_errors": getattr(sink, "errors", 0),
        "counters": agent.health.snapshot(),
        "modules": {
            n: {"errors": s.errors, "quarantined": s.quarantined, "distribution": s.distribution}
            for n, s in agent.host.states.items()
        },
    }


def _run_test(config: Any, host: ModuleHost, seconds: float, as_json: bool) -> int:
    """One polling round of every configured module, printed decoded, nothing sent.  Exit
    status 1 when a module failed (disabled at configure, or a hook raised): its error is in
    the log and its output is missing."""
    from .sflow.datagram import decode_datagram
    from .tools.render import datagram_json, datagram_text

    agent, sink = recording_agent(config, host)

    async def once() -> None:
        agent.start(asyncio.get_running_loop())
        agent.poll_counters(force=True)
        await asyncio.sleep(seconds)
        agent.stop()

    asyncio.run(once())
    import json

    for raw in sink.datagrams:
        d = decode_datagram(raw)
        print(json.dumps(datagram_json(d)) if as_json else datagram_text(d))
    failed = sorted(n for n, s in host.states.items() if s.errors)
    if failed:
        print(f"hostsflowd --test: module(s) failed: {', '.join(failed)} (see the log)",
              file=sys.stderr)
        return 1
    return 0


# ================================================================ hostsflow (tools)


def tools_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hostsflow", description="hostsflow tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decode", help="a small collector: print every datagram received")
    from .tools.allow import add_allow_argument
    from .tools.decode import add_arguments as add_decode_arguments

    add_decode_arguments(d)
    mo = sub.add_parser("modules", help="installed modules, their distribution and version")
    mo.add_argument("-f", "--config", default=DEFAULT_CONFIG, help="to show which are enabled")
    mo.add_argument("-v", "--verbose", action="store_true", help="also entry points and hooks")
    c = sub.add_parser("config", help="annotated config blocks of the installed modules")
    c.add_argument("module", nargs="?", help="only this module")
    s = sub.add_parser("status", help="the running agent's health counters")
    s.add_argument("--status-file", default=DEFAULT_STATUS)
    for name, what in (("view", "a live chart of traffic by service on a local web page"),
                       ("top", "traffic by service in the terminal")):
        v = sub.add_parser(name, help=what + " (needs the 'view' extra)")
        v.add_argument("--listen-sflow", default="0.0.0.0:6343",
                       help="UDP ADDR:PORT to receive sFlow on (%(default)s)")
        v.add_argument("--window", type=float, default=5.0,
                       help="seconds the rates are averaged over (%(default)s)")
        add_allow_argument(v)
        v.add_argument("--status-file", default=DEFAULT_STATUS,
                       help="the local agent's status file, read for hints (%(default)s)")
        if name == "view":
            v.add_argument("--http", default="127.0.0.1:8008",
                           help="ADDR:PORT of the page (%(default)s)")
        else:
            v.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    args = p.parse_args(argv)
    configure_logging()
    if args.cmd == "decode":
        from .tools.decode import run_args

        _import_record_classes()
        return run_args(args)
    if args.cmd in ("view", "top"):
        return _view_or_top(args)
    if args.cmd == "modules":
        return _modules(args.config, args.verbose)
    if args.cmd == "config":
        return _config(args.module)
    if args.cmd == "status":
        try:
            status = read_status(args.status_file)
        except OSError as exc:
            print(f"no status at {args.status_file}: {exc.strerror} (is hostsflowd running?)",
                  file=sys.stderr)
            return 1
        import json

        print(json.dumps(status, indent=1, sort_keys=True))
        return 0
    return 1


def _view_or_top(args: argparse.Namespace) -> int:
    """``hostsflow view`` / ``hostsflow top`` (their libraries come with the 'view' extra)."""
    try:
        if args.cmd == "view":
            from .tools.view.server import run_view

            return run_view(args.listen_sflow, args.http, args.window, allow=args.allow,
                            status_file=args.status_file)
        from .tools.top import run_top
    except ImportError as exc:
        print(f"hostsflow {args.cmd}: {exc.name} is missing: pip install 'hostsflow[view]'",
              file=sys.stderr)
        return EXIT_CONFIG
    return run_top(args.listen_sflow, args.window, args.seconds, allow=args.allow,
                   status_file=args.status_file)


def _import_record_classes() -> None:
    """Import every installed module so the record classes they define are registered and
    ``hostsflow decode`` prints them by name (third-party records too).  A module that fails
    to import is skipped; ``hostsflow modules`` shows why."""
    for info in installed_modules().values():
        try:
            info.entry_point.load()
        except Exception:  # noqa: BLE001 - decoding must work whatever is installed
            continue


def _enabled_in(path: str) -> set[str]:
    from .config.schema import module_blocks

    try:
        with open(path) as f:
            return set(module_blocks(f.read(), path))
    except (OSError, ConfigError):
        return set()


def _modules(config_path: str = DEFAULT_CONFIG, verbose: bool = False) -> int:
    """List every installed module (in-repo or third-party): distribution, version, whether
    the config enables it, and whether it loads.  Exit status 1 if any module fails to load."""
    from .modules import implemented_hooks

    enabled = _enabled_in(config_path)
    mods = installed_modules()
    failed = 0
    print(f"{'module':10} {'distribution':24} {'version':10} {'enabled':8} load")
    for name in sorted(mods):
        info = mods[name]
        hooks: list[str] = []
        try:
            hooks = implemented_hooks(ModuleHost().load(info))
            state = "ok"
        except ModuleLoadError as exc:
            state = f"ERROR: {exc}"
            failed += 1
        flag = "yes" if name in enabled else "no"
        print(f"{name:10} {info.distribution:24} {info.version:10} {flag:8} {state}")
        if verbose:
            print(f"{'':10} entry point {info.value}")
            if hooks:
                print(f"{'':10} hooks: {', '.join(hooks)}")
    if not mods:
        print("(no modules installed: pip install hostsflow-pcap, for example)")
    return 1 if failed else 0


def _config(only: str | None) -> int:
    """Print an annotated sample block for the agent and every installed module (or only
    ``only``), rendered from the attrs classes the modules declare.  A module that fails to
    load is named in a comment and makes the exit status 1."""
    from .config.registry import ConfigRegistry, render_block
    from .config.schema import AgentConfig

    mods = installed_modules()
    if only and only not in mods and only != "sflow":
        print(f"unknown module '{only}' (installed: {', '.join(sorted(mods)) or 'none'})",
              file=sys.stderr)
        return EXIT_CONFIG
    host = ModuleHost()
    registry = ConfigRegistry({n: i.distribution for n, i in mods.items()})
    failed: list[str] = []
    for name, info in sorted(mods.items()):
        if only and name != only:
            continue
        try:
            host.load(info)
        except ModuleLoadError as exc:
            print(f"# {name}: not loaded: {exc}")
            failed.append(name)
    host.hook.sflow_declare_config(registry=registry)
    if not only or only == "sflow":
        print(render_block("sflow", AgentConfig, "the agent (hsflowd.conf top level)"))
    for name, spec in sorted(registry.specs.items()):
        print(render_block(spec.name, spec.cls, spec.help, repeatable=spec.repeatable))
    for name in sorted(host.states):
        if name not in registry.specs:
            print(f"# {name}: declares no config block, so it cannot be enabled "
                  f"(its sflow_declare_config must call registry.block('{name}', ...))")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(agent_main())
