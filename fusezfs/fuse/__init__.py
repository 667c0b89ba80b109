"""The pyfuse3 adapter: FUSE handlers over the POSIX layer, the request loop, FUSE sessions.
The only layer that imports pyfuse3."""
