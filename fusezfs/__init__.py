"""fusezfs: ZFS semantics in userspace."""
