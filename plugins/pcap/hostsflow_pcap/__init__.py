"""hostsflow's pcap module: kernel-sampled packet taps (``pcap { dev = eth0 }``)."""
