"""DNS-SD: an agent's collectors and settings from the SRV and TXT records of
``_sflow._udp.<domain>``, as hsflowd's mod_dnssd (``dns-sd { domain = ... }``).

:mod:`.records` turns an answer into settings (hsflowd's formats and bounds), :mod:`.lookup`
asks DNS (dnspython), :mod:`.client` schedules the queries off the event loop and installs the
answers, :mod:`.origins` says where each setting came from."""
