"""The asyncio edge: sockets, TUN, routes; the only code that does I/O for the gateway."""
