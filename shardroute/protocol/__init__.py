"""Sans-IO protocol cores: bytes in, events and bytes out. No sockets, tasks or clocks here."""
