"""The DNS-SD queries: SRV, then TXT, of one name, with dnspython, blocking (run it in a
background thread, never on the event loop).

The resolver is the system's (``/etc/resolv.conf``: its servers, search list, ndots and
timeouts), and the search list applies as with hsflowd's ``res_search``.  No name or no record
of the type is an empty answer (hsflowd: no collectors); a timeout, SERVFAIL or no reachable
server is a failed one (the settings in force stay).  A failed TXT query fails the answer too,
so that a DNS hiccup never takes the TXT settings away while the collectors stay."""

from __future__ import annotations

from typing import Any, Sequence

from .records import Answer, SrvRecord, TxtString

LIFETIME = 10.0  #: seconds one query may take, all retries and servers included


def _ask(resolver: Any, name: str, rdtype: str) -> tuple[str, Any]:
    """("ok", rrset) | ("none", None) | ("failed", error text)."""
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(name, rdtype, search=True)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return "none", None
    except dns.exception.DNSException as exc:
        return "failed", f"{type(exc).__name__}: {exc}"
    return "ok", answer.rrset


def query(name: str, nameservers: Sequence[str] = (), port: int = 53,
          lifetime: float = LIFETIME) -> Answer:
    """Ask for the SRV and TXT records of ``name``.  ``nameservers`` (with ``port``) replaces
    the system's servers (tests); never raises for a DNS problem: that is a failed answer."""
    import dns.exception
    import dns.resolver

    try:
        resolver = dns.resolver.Resolver(configure=not nameservers)
    except dns.exception.DNSException as exc:  # no /etc/resolv.conf, or no server in it
        return Answer(name, "failed", error=f"{type(exc).__name__}: {exc}")
    if nameservers:
        resolver.nameservers = list(nameservers)
        resolver.port = port
    resolver.lifetime = lifetime
    status, srv = _ask(resolver, name, "SRV")
    if status == "failed":
        return Answer(name, "failed", error=srv)
    txt_status, txt = _ask(resolver, name, "TXT")
    if txt_status == "failed":
        return Answer(name, "failed", error=f"TXT: {txt}")
    srvs = tuple(SrvRecord(r.target.to_text(omit_final_dot=True), r.port, srv.ttl)
                 for r in srv) if srv is not None else ()
    txts = tuple(TxtString(s, txt.ttl) for r in txt for s in r.strings) if txt is not None else ()
    if status == "none":
        return Answer(name, "none", txt=txts)
    return Answer(name, "ok", srv=srvs, txt=txts)
