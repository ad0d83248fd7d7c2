"""Sans-I/O OpenVPN 2.x protocol core: codecs, control channel, data channel, sessions."""
