"""The POSIX layer over one dataset's object tree (files, directories, links, xattrs, the
intent-log records of fsync) and volumes. ZFS's ZPL and zvol."""
