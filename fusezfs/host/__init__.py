"""The host layer: what makes the pools of one state directory one ZFS host — the service that
owns every imported pool, its control socket, the registry of imported pools, the mounts and the
routing of commands. Importing this package imports nothing: the thin client (client.py) must
stay cheap."""
