"""Command lines: ``hostsflowd`` (the agent) and ``hostsflow`` (decode, modules, config, status,
view, top).

Config mistakes print ``FILE:LINE: message`` on stderr and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import pwd
import sys
import time
from typing import Any, Sequence

from . import __version__, daemon_args
from .agent import Agent, recording_agent
from .bootstrap import load_file
from .config.parser import ConfigError
from .daemon_args import DEFAULT_CONFIG, DEFAULT_STATUS
from .health import StatusError, StatusFile, read_status
from .logsetup import configure_logging, structlog
from .modules import ModuleHost, ModuleLoadError, installed_modules
from .privileges import PrivilegeError
from .run_loop import run_agent

STATUS_EVERY = 5  # seconds between status file updates
EXIT_CONFIG = 2


# ================================================================ hostsflowd


def agent_main(argv: Sequence[str] | None = None) -> int:
    args = daemon_args.parse_args(argv)
    log_stream = None
    if args.log_file:
        try:
            log_stream = daemon_args.LimitedLog(args.log_file, args.log_bytes)
        except OSError as exc:
            print(f"hostsflowd: cannot open log file {args.log_file}: {exc.strerror}",
                  file=sys.stderr)
            return EXIT_CONFIG
    configure_logging(debug=args.debug > 0, stream=log_stream)  # type: ignore[arg-type]
    log = structlog.get_logger("hostsflow.cli")
    for flag, why in daemon_args.unused_flags(args).items():
        log.debug("flag_has_no_use_here", flag=flag, detail=why)
    try:
        loaded = load_file(args.config, require_collector=not args.test)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    if args.test:
        return _run_test(loaded.config, loaded.host, args.test_seconds, args.json)
    if args.crash_file:
        try:
            crash = open(args.crash_file, "w")
        except OSError as exc:
            print(f"hostsflowd: cannot open crash file {args.crash_file}: {exc.strerror}",
                  file=sys.stderr)
            return EXIT_CONFIG
        faulthandler.enable(crash, all_threads=True)
    pid_file = None
    if args.pid_file:
        try:
            pid_file = daemon_args.PidFile(args.pid_file)
        except (OSError, daemon_args.PidFileError) as exc:
            print(f"hostsflowd: pid file: {exc}", file=sys.stderr)
            return 1

    agent = Agent(loaded.config, loaded.host, user=None if args.keep_root else args.run_as,
                  uuid=args.uuid, machine_id=args.machine_id)
    if args.status_file:
        _write_status_periodically(agent, args.status_file, args.config,
                                   _status_owner(agent, args))

    def reload() -> Any:
        new = load_file(args.config)
        for name in set(new.host.states) - set(agent.host.states):
            agent.log.warning("reload_new_module_needs_restart", module=name)
        return new.config

    try:
        asyncio.run(run_agent(agent, reload=reload,
                              every_second=daemon_args.memory_check(args.mem_limit)))
    except PrivilegeError as exc:
        why = exc.strerror or str(exc)
        log.error("drop_privileges_failed", user=args.run_as, error=why)
        print(f"hostsflowd: cannot drop privileges to {args.run_as}: {why}; not running with "
              "more privilege than asked (-P or dropPriv = off keeps root)", file=sys.stderr)
        return EXIT_CONFIG
    except daemon_args.MemoryLimitExceeded as exc:
        log.error("memory_limit_exceeded", error=str(exc))
        return 1
    finally:
        if pid_file is not None:
            pid_file.remove()
    return 0


def _status_owner(agent: Agent, args: argparse.Namespace) -> tuple[int, int] | None:
    """Who the status file's directory should belong to: the user the agent drops to."""
    if args.keep_root or not agent.config.drop_priv or os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(args.run_as)
    except KeyError:
        return None  # the drop itself fails and says so
    return pw.pw_uid, pw.pw_gid


def _write_status_periodically(agent: Agent, path: str, config_path: str,
                               owner: tuple[int, int] | None) -> None:
    """The status file, rewritten every STATUS_EVERY seconds and at the end.  It is for the
    operator only: a failure to write it is logged once (and counted) and the agent runs on."""
    from .hookspecs import hookimpl

    started = time.time()
    status_file: list[StatusFile] = []

    def attempt(what: Any) -> None:
        try:
            what()
        except OSError as exc:
            agent.warn_once("status_file", "status_file_failed", path=path,
                            error=exc.strerror or str(exc),
                            detail="the agent runs on without it")
        else:
            agent.clear_warning("status_file")

    def write(state: str) -> None:
        if not status_file:
            status_file.append(StatusFile(path, owner, own_directory=_default_dir(path)))
        status_file[0].write(_status(agent, config_path, started, state))

    attempt(lambda: status_file.append(StatusFile(path, owner,
                                                  own_directory=_default_dir(path))))

    class StatusWriter:
        @hookimpl
        def sflow_tock(self, agent: Agent, now: float) -> None:
            if agent.seconds % STATUS_EVERY == 0:
                attempt(lambda: write("running"))

        @hookimpl(trylast=True)  # after every module's own final counts
        def sflow_final(self, agent: Agent) -> None:
            attempt(lambda: write("stopped"))
            if status_file:
                status_file[0].close()

    agent.host.register("status", StatusWriter())


def _default_dir(path: str) -> bool:
    return os.path.dirname(os.path.abspath(path)) == os.path.dirname(DEFAULT_STATUS)


def _status(agent: Agent, config_path: str, started: float, state: str) -> dict[str, Any]:
    sink = agent.sink
    return {
        "time": time.time(),
        "state": state,
        "pid": os.getpid(),
        "version": __version__,
        "config": os.path.abspath(config_path),
        "started": started,
        "uid": os.geteuid(),
        "agent_address": agent.address,
        "datagrams": agent.exporter.datagrams,
        "samples_queued": agent.exporter.samples,
        "send_errors": getattr(sink, "errors", 0),
        "counters": agent.health.snapshot(),
        "settings": agent.setting_origins(),
        "dns_sd": agent.dnssd.status() if agent.dnssd is not None else None,
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
        if agent.dnssd is not None:  # the records now, not after the start delay
            await agent.dnssd.answer_now()
        agent.poll_counters(force=True)
        await asyncio.sleep(seconds)
        agent.stop()

    asyncio.run(once())
    import json

    origins = agent.setting_origins()
    dns_sd = agent.dnssd.status() if agent.dnssd is not None else None
    if as_json:
        agent.log.info("settings", dns_sd=dns_sd, **origins)
    else:
        from .dnssd.origins import render

        if dns_sd is not None:
            print(f"# DNS-SD {dns_sd['name']}: {dns_sd['state']} {dns_sd['error']}".rstrip())
        print("# settings (where from)")
        for line in render(origins):
            print(f"#   {line}")
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
    """``hostsflow``: every command ends with one clear line on failure, never a traceback
    (a reader that went away, ``hostsflow config | head``, ends it quietly)."""
    try:
        status = _tools(argv)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # the reader closed the pipe: nothing more to say; stdout must not be flushed again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _tools(argv: Sequence[str] | None) -> int:
    p = argparse.ArgumentParser(prog="hostsflow", description="hostsflow tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decode", help="a small collector: print every datagram received")
    from .tools.allow import add_allow_argument
    from .tools.decode import add_arguments as add_decode_arguments

    add_decode_arguments(d)
    mo = sub.add_parser("modules", help="installed modules, their distribution and version")
    mo.add_argument("-f", "--config", default=None,
                    help=f"to show which are enabled (default {DEFAULT_CONFIG}, if present)")
    mo.add_argument("-v", "--verbose", action="store_true", help="also entry points and hooks")
    c = sub.add_parser("config", help="annotated config blocks of the installed modules")
    c.add_argument("module", nargs="?", help="only this module")
    s = sub.add_parser("status", help="the running agent's health counters")
    s.add_argument("--status-file", default=DEFAULT_STATUS, help="(%(default)s)")
    s.add_argument("--json", action="store_true",
                   help="the whole status as JSON, with its age and whether its agent runs")
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
            v.add_argument("--metrics-max-series", type=int, default=10_000,
                           help="the most series one /metrics family may have; more are "
                                "summed into one _overflow series and counted (%(default)s)")
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
        return _show_status(args.status_file, args.json)
    return 1


def _show_status(path: str, as_json: bool) -> int:
    """``hostsflow status``: who wrote the status file (pid, config, start time, user), how old
    it is and whether that agent still runs, then its counters.  Exit status 1 when there is
    no usable status or its agent is gone."""
    try:
        status = read_status(path)
    except OSError as exc:
        print(f"no status at {path}: {exc.strerror} (is hostsflowd running? its "
              f"--status-file is {DEFAULT_STATUS} unless told otherwise)", file=sys.stderr)
        return 1
    except StatusError as exc:
        print(f"no usable status in {path}: {exc}", file=sys.stderr)
        return 1
    import json

    now = time.time()
    written = _number(status.get("time"))
    age = now - written if written else None
    pid = status.get("pid")
    alive = daemon_args.agent_alive(pid) if isinstance(pid, int) else None
    state = status.get("state")
    if as_json:
        print(json.dumps({**status, "age_seconds": age, "agent_running": alive}, indent=1,
                         sort_keys=True))
        return 0 if alive is not False else 1
    if not isinstance(pid, int):
        who = "written by an agent that did not record its pid (an older version)"
    elif state == "stopped":
        who = f"written by hostsflowd pid {pid}, which stopped"
    elif alive:
        who = f"written by hostsflowd pid {pid}, running"
    else:
        who = f"written by hostsflowd pid {pid}, which is gone (it did not stop cleanly)"
    print(f"status   {path}: {who}")
    if status.get("config"):
        print(f"config   {status['config']}")
    started = _number(status.get("started"))
    if started:
        print(f"started  {_when(started)} ({_ago(now - started)} ago)")
    if written:
        stale = (alive and state != "stopped" and age is not None and age > 3 * STATUS_EVERY)
        print(f"written  {_when(written)} ({_ago(age or 0)} ago"
              + (f"; stale: the agent rewrites it every {STATUS_EVERY} s" if stale else "")
              + ")")
    for key in ("uid", "agent_address", "datagrams", "samples_queued", "send_errors"):
        if key in status:
            print(f"{key:9}{status[key]}")
    print("counters " + json.dumps(status.get("counters", {}), indent=1, sort_keys=True)
          .replace("\n", "\n         "))
    if status.get("modules"):
        print("modules  " + json.dumps(status["modules"], sort_keys=True))
    return 0 if alive is not False or state == "stopped" else 1


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _view_or_top(args: argparse.Namespace) -> int:
    """``hostsflow view`` / ``hostsflow top`` (their libraries come with the 'view' extra)."""
    try:
        if args.cmd == "view":
            from .tools.view.server import run_view

            return run_view(args.listen_sflow, args.http, args.window, args.metrics_max_series,
                            allow=args.allow, status_file=args.status_file)
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
    """The module blocks config file ``path`` names.  :raises ConfigError: it cannot be read
    (not a regular file of sane size included) or has a syntax error."""
    from .config.schema import module_blocks, read_config_text

    return set(module_blocks(read_config_text(path), path))


def _modules(config_path: str | None = None, verbose: bool = False) -> int:
    """List every installed module (in-repo or third-party): distribution, version, whether
    the config enables it, and whether it loads.  Exit status 1 if any module fails to load."""
    from .modules import implemented_hooks

    try:
        enabled = _enabled_in(config_path or DEFAULT_CONFIG)
    except ConfigError as exc:
        if config_path is not None or os.path.exists(DEFAULT_CONFIG):
            print(str(exc), file=sys.stderr)
            return EXIT_CONFIG
        enabled = set()  # no config at the default place: nothing is enabled
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
        print("(no modules installed: scripts/install-agent.sh installs the ones in plugins/)")
    return 1 if failed else 0


def _config(only: str | None) -> int:
    """Print a sample config for the agent and every installed module (or only ``only``),
    rendered from the attrs classes the modules declare: one ``sflow { }`` block with the
    module blocks inside, each commented out unless it is the one asked for, so the output
    loads as it stands and enables nothing that was not asked for.  A module that fails to
    load is named in a comment and makes the exit status 1."""
    from .config.registry import ConfigRegistry
    from .config.schema import render_config

    mods = installed_modules()
    if only and only not in mods and only != "sflow":
        print(f"unknown module '{only}' (installed: {', '.join(sorted(mods)) or 'none'})",
              file=sys.stderr)
        return EXIT_CONFIG
    host = ModuleHost()
    registry = ConfigRegistry({n: i.distribution for n, i in mods.items()})
    notes: list[str] = []
    failed: list[str] = []
    for name, info in sorted(mods.items()):
        if only and name != only:
            continue
        try:
            host.load(info)
        except ModuleLoadError as exc:
            notes.append(f"{name}: not loaded: {exc}")
            failed.append(name)
    host.hook.sflow_declare_config(registry=registry)
    for name in sorted(host.states):
        if name not in registry.specs:
            notes.append(f"{name}: declares no config block, so it cannot be enabled "
                         f"(its sflow_declare_config must call registry.block('{name}', ...))")
    chosen = [] if only == "sflow" else sorted(registry.specs)
    print(render_config(registry, chosen, enabled=[only] if only else [], notes=notes), end="")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(agent_main())
