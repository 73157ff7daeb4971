"""hostsflow tcp module: extended_tcp_info via the core's socket lookups (see README.md)."""
