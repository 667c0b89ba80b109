"""Command-line behaviour OpenZFS's test suite (tools/zts) showed missing or different, each
checked against OpenZFS 2.1.11's manual and zfs_main.c/zpool_main.c, in-process."""
from __future__ import annotations

from clitools import check_pools, ok, pool_files, run


def test_zfs_upgrade_lists_versions_and_finds_every_filesystem_current(tmp_path, monkeypatch,
                                                                        capsys):
    disk, = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", disk)
    ok(capsys, "create", "tank/fs")
    ok(capsys, "create", "-V", "8M", "tank/vol")
    out = ok(capsys, "upgrade")
    assert out == ("This system is currently running ZFS filesystem version 5.\n\n"
                   "All filesystems are formatted with the current version.\n")
    out = ok(capsys, "upgrade", "-v")
    assert out.startswith("The following filesystem versions are supported:\n\nVER  DESCRIPTION\n")
    assert " 5   System attributes\n" in out and " 1   Initial ZFS filesystem version\n" in out
    # tank and tank/fs are filesystems (the volume is not one)
    assert ok(capsys, "upgrade", "-a") == ("0 filesystems upgraded\n"
                                           "2 filesystems already at this version\n")
    assert ok(capsys, "upgrade", "-r", "tank") == ("0 filesystems upgraded\n"
                                                   "2 filesystems already at this version\n")
    assert ok(capsys, "upgrade", "-V", "current", "tank/fs") == (
        "0 filesystems upgraded\n1 filesystems already at this version\n")
    code, out, err = run(capsys, "upgrade", "-V", "3", "tank/fs")    # a downgrade: refused
    assert code == 1 and out == ("tank/fs: can not be downgraded; it is already at version 5\n"
                                 "0 filesystems upgraded\n")
    code, out, err = run(capsys, "upgrade", "tank/vol")
    assert code == 1 and "cannot open 'tank/vol': operation not applicable to datasets of " \
                         "this type" in err
    code, out, err = run(capsys, "upgrade", "tank/nope")
    assert code == 1 and "cannot open 'tank/nope': dataset does not exist" in err
    for bad in (["-V", "6", "tank"], ["-r"], ["-v", "-a"], ["-a", "tank"], ["-V", "5"]):
        code, out, err = run(capsys, "upgrade", *bad)
        assert code == 2 and "upgrade [-r] [-V version] <-a | filesystem ...>" in err, bad
    assert "invalid version 6" in run(capsys, "upgrade", "-V", "6", "tank")[2]
    check_pools()


def test_a_clone_takes_the_properties_of_its_origins_type(tmp_path, monkeypatch, capsys):
    """zfs_clone validates -o for a volume's clone as a volume's (zfs_clone_009_neg)."""
    disk, = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", disk)
    ok(capsys, "create", "-V", "8M", "tank/vol")
    ok(capsys, "create", "tank/fs")
    ok(capsys, "snapshot", "tank/vol@s", "tank/fs@s")
    for origin, prop in (("tank/vol@s", "quota=512M"), ("tank/vol@s", "recordsize=8K"),
                         ("tank/fs@s", "volblocksize=8K")):
        code, out, err = run(capsys, "clone", "-o", prop, origin, "tank/c")
        assert code == 1 and err == (f"cannot create 'tank/c': '{prop.split('=')[0]}' does "
                                     "not apply to datasets of this type\n"), (origin, prop)
        assert "tank/c" not in ok(capsys, "list", "-H", "-o", "name")
    ok(capsys, "clone", "-o", "compression=off", "tank/vol@s", "tank/vc")
    assert ok(capsys, "get", "-H", "-o", "value", "type,compression", "tank/vc") == \
        "volume\noff\n"
    check_pools()


def test_share_properties_take_only_options_the_share_backend_knows(tmp_path, monkeypatch,
                                                                     capsys):
    """libzfs checks sharenfs/sharesmb with libshare (zfs_parse_options): sharenfs takes
    on/off or Linux NFS export options, sharesmb only on/off (zfs_create_008_neg)."""
    disk, = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", disk)
    for prop in ("sharenfs=ON", "sharenfs=sss", "sharenfs=rw,bogus", "sharesmb=name=x"):
        code, out, err = run(capsys, "create", "-o", prop, "tank/fs")
        name = prop.split("=")[0]
        assert code == 1 and err == f"cannot create 'tank/fs': '{name}' cannot be set to " \
                                    f"invalid options\n", prop
        code, out, err = run(capsys, "set", prop, "tank")
        assert code == 1 and err == f"cannot set property for 'tank': '{name}' cannot be " \
                                    f"set to invalid options\n", prop
    for prop in ("sharenfs=on", "sharenfs=rw=@10.0.0.0/8,no_root_squash,sec=sys",
                 "sharesmb=off"):
        ok(capsys, "set", prop, "tank")
        assert ok(capsys, "get", "-H", "-o", "value", prop.split("=")[0], "tank") == \
            prop.split("=", 1)[1] + "\n"
    check_pools()


def test_create_refuses_names_nested_50_deep(tmp_path, monkeypatch, capsys):
    """dataset_nestcheck (zfs_max_dataset_nesting=50), with and without -p
    (zfs_create_009_neg); 49 levels below the pool are fine."""
    disk, = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", disk)
    deep = "tank" + "/a" * 50
    for flags in ([], ["-p"]):
        code, out, err = run(capsys, "create", *flags, deep)
        assert code == 1 and err == f"cannot create '{deep}': maximum name nesting depth " \
                                    "exceeded\n", flags
    assert ok(capsys, "list", "-H", "-o", "name") == "tank\n"
    ok(capsys, "create", "-p", deep[:-2])
    assert len(ok(capsys, "list", "-H", "-o", "name").split()) == 50
    check_pools()


def test_create_dry_run_and_verbose(tmp_path, monkeypatch, capsys):
    """zfs create -n makes nothing and says nothing; -v and -P say what is (or would be)
    made, as zfs_do_create prints it (zfs_create_dryrun, zfs_create_verbose)."""
    disk, = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", disk)
    assert run(capsys, "create", "-n", "tank/fs") == (0, "", "")
    assert run(capsys, "create", "-n", "-V", "10m", "tank/fs") == (0, "", "")
    assert run(capsys, "create", "-np", "tank/a/b") == (0, "", "")
    assert ok(capsys, "list", "-H", "-o", "name") == "tank\n"
    code, out, err = run(capsys, "create", "-n", "-o", "nosuchprop=42", "tank/fs")
    assert code == 1 and err == "cannot verify 'tank/fs': invalid property 'nosuchprop'\n"
    code, out, err = run(capsys, "create", "-n", "nopool/fs")
    assert code == 1 and err == "cannot open 'nopool': no such pool\n"
    assert ok(capsys, "create", "-Pn", "-o", "compression=on", "tank/fs") == \
        "create\ttank/fs\nproperty\tcompression\ton\n"
    out = ok(capsys, "create", "-Pn", "-b", "4k", "-V", "10m", "tank/vol")
    lines = out.splitlines()
    assert lines[0] == "create\ttank/vol"
    assert sorted(lines[1:3]) == ["property\tvolblocksize\t4096", "property\tvolsize\t10485760"]
    assert lines[3].startswith("property\trefreservation\t") and len(lines) == 4
    assert ok(capsys, "create", "-Pn", "-s", "-b", "4k", "-V", "10m", "tank/vol").count("\n") == 3
    assert ok(capsys, "create", "-nv", "-p", "tank/a/b") == \
        "would create ancestors of tank/a/b\nwould create tank/a/b\n"
    assert ok(capsys, "list", "-H", "-o", "name") == "tank\n"
    assert ok(capsys, "create", "-v", "-o", "atime=off", "tank/fs") == "create tank/fs\n" \
                                                                      "\tatime=off\n"
    assert ok(capsys, "create", "-pP", "tank/x/y") == "create_ancestors\ttank/x/y\n" \
                                                     "create\ttank/x/y\n"
    assert ok(capsys, "create", "-pv", "tank/x/y") == ""          # there already
    assert ok(capsys, "list", "-H", "-o", "name") == "tank\ntank/fs\ntank/x\ntank/x/y\n"
    check_pools()


def test_one_snapshot_per_filesystem_in_a_command(tmp_path, monkeypatch, capsys):
    """zfs_ioc_snapshot refuses two snapshots of one filesystem in a request (EXDEV), which
    libzfs words "multiple snapshots of same fs not allowed" (zfs_snapshot_003_neg)."""
    disk, = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", disk)
    ok(capsys, "create", "tank/fs")
    ok(capsys, "create", "tank/fs/child")
    for flags in ([], ["-r"]):
        code, out, err = run(capsys, "snapshot", *flags, "tank/fs@a", "tank/fs@b")
        assert code == 1 and err == ("cannot create snapshots : multiple snapshots of same fs "
                                     "not allowed\nno snapshots were created\n"), flags
    code, out, err = run(capsys, "snapshot", "-r", "tank@a", "tank/fs/child@b")
    assert code == 1 and "multiple snapshots of same fs not allowed" in err
    assert ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name") == ""
    ok(capsys, "snapshot", "tank/fs@a", "tank/fs@a", "tank/fs/child@a")    # one name twice
    assert ok(capsys, "list", "-H", "-t", "snapshot", "-o", "name") == \
        "tank/fs@a\ntank/fs/child@a\n"
    check_pools()


def test_rename_keeps_every_name_under_the_limits(tmp_path, monkeypatch, capsys):
    """dsl_valid_rename: a rename that would make a descendant's or a snapshot's name 256
    characters or longer, or nest a dataset 50 deep, is refused (zfs_snapshot_005_neg)."""
    disk, = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", disk)
    ok(capsys, "create", "tank/fs")
    snap = "tank/fs@" + "s" * (255 - len("tank/fs@"))           # 255 characters: the most
    ok(capsys, "snapshot", snap)
    for new in ("tank/fsa", "tank/fs-new"):
        code, out, err = run(capsys, "rename", "tank/fs", new)
        assert code == 1 and err == "cannot rename 'tank/fs': dataset name is too long\n"
    ok(capsys, "rename", "tank/fs", "tank/f")                   # shorter is fine
    ok(capsys, "create", "-p", "tank" + "/a" * 48)               # 48 deep
    ok(capsys, "create", "tank/b")
    code, out, err = run(capsys, "rename", "tank/b", "tank/a/b")   # 2 deep: fine
    assert code == 0, err
    ok(capsys, "create", "tank/a/b/c")
    code, out, err = run(capsys, "rename", "tank/a/a", "tank/a/b/c/d")  # its leaf 50 deep
    assert code == 1 and err == "cannot rename 'tank/a/a': dataset name is too long\n"
    ok(capsys, "rename", "tank/a/a", "tank/a/b/d")                     # 49: the most
    check_pools()


def test_create_and_add_check_the_replication_level(tmp_path, monkeypatch, capsys):
    """zpool_vdev.c's get_replication/check_replication: mirrors of devices more than 16 MiB
    apart, mixed vdev types or widths, and an add unlike the pool are refused without -f
    (zpool_create_011_neg, zpool_add_002_pos)."""
    d = pool_files(tmp_path, monkeypatch, 6)
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(160 << 20)                   # 32 MiB more than the others
    header = "invalid vdev specification\nuse '-f' to override the following errors:\n"
    for spec, why in (
            (["mirror", d[0], str(big)], "mirror contains devices of different sizes"),
            ([d[0], "mirror", d[1], d[2]],
             "mismatched replication level: both file and mirror vdevs are present"),
            (["mirror", d[0], d[1], "mirror", d[2], d[3], d[4]],
             "mismatched replication level: both 2-way and 3-way mirror vdevs are present")):
        code, out, err = run(capsys, "pool", "create", "tank", *spec)
        assert code == 1 and err == header + why + "\n", spec
    assert ok(capsys, "pool", "list", "-H", "-o", "name") == ""
    ok(capsys, "pool", "create", "tank", "mirror", d[0], d[1])
    code, out, err = run(capsys, "pool", "add", "tank", d[2])
    assert code == 1 and err == header + "mismatched replication level: pool uses mirror " \
                                         "and new vdev is file\n"
    code, out, err = run(capsys, "pool", "add", "tank", "mirror", d[2], d[3], d[4])
    assert code == 1 and err == header + "mismatched replication level: pool uses 2-way " \
                                         "mirror and new vdev uses 3-way mirror\n"
    ok(capsys, "pool", "add", "tank", "mirror", d[2], d[3])     # alike: no -f needed
    ok(capsys, "pool", "add", "-f", "tank", d[4])               # -f overrides
    status = ok(capsys, "pool", "status", "tank")
    assert d[4] in status and "mirror-1" in status
    ok(capsys, "pool", "create", "-f", "other", "mirror", d[5], str(big))
    check_pools()


def test_zpool_iostat_shows_capacity_and_the_vdev_tree(tmp_path, monkeypatch, capsys):
    """zpool iostat [-Hpv]: OpenZFS's header and layout, real capacity per pool and per
    top-level vdev, '-' where fusezfs keeps no I/O counters; the test suite's get_disklist
    (`zpool iostat -v POOL | nawk '(NR > 4) {print $1}'`) finds the leaves."""
    d = pool_files(tmp_path, monkeypatch, 3)
    ok(capsys, "pool", "create", "tank", "mirror", d[0], d[1])
    ok(capsys, "pool", "add", "-f", "tank", d[2])
    out = ok(capsys, "pool", "iostat", "-v", "tank").splitlines()
    width = len("    " + d[0])
    assert out[0] == " " * width + "    capacity     operations     bandwidth "
    assert out[1] == "pool".ljust(width) + "  alloc   free   read  write   read  write"
    assert out[2] == out[-1] == "-" * width + "  -----" * 6
    names = [line.split()[0] for line in out[4:] if not line.startswith("-")]
    assert names == ["mirror-0", d[0], d[1], d[2]]
    assert out[5].split()[1:] == ["-"] * 6                   # a mirror's leaf: no capacity
    size = int(ok(capsys, "pool", "list", "-Hp", "-o", "size", "tank"))
    rows = [line.split("\t") for line in ok(capsys, "pool", "iostat", "-Hpv").splitlines()]
    assert rows[0][0] == "tank" and rows[0][3:] == ["0"] * 4
    tops = [r for r in rows if r[0] in ("mirror-0", d[2])]
    for column in (1, 2):                   # the pool's line sums its top-level vdevs'
        assert int(rows[0][column]) == sum(int(r[column]) for r in tops)
    assert int(rows[0][1]) + int(rows[0][2]) == size and int(rows[0][1]) > 0
    assert ok(capsys, "pool", "iostat").splitlines()[3].split()[0] == "tank"
    code, out, err = run(capsys, "pool", "iostat", "nopool")
    assert code == 1 and err == "cannot open 'nopool': no such pool\n"
    code, out, err = run(capsys, "pool", "nosuchverb")
    assert code == 2 and err.startswith("unrecognized command 'nosuchverb'\nusage: zpool "
                                        "command args ...\n") and "\tiostat [-Hpv]" in err
    check_pools()


def test_import_finds_destroyed_pools_with_D(tmp_path, monkeypatch, capsys):
    """zpool import -D lists and imports destroyed pools (their labels say so), and only
    them; -a takes no pool name (zpool_import_003_pos, zpool_import_009_neg)."""
    d = pool_files(tmp_path, monkeypatch, 2)
    ok(capsys, "pool", "create", "tank", "mirror", d[0], d[1])
    ok(capsys, "create", "tank/fs")
    ok(capsys, "pool", "destroy", "tank")
    code, out, err = run(capsys, "pool", "import", "-d", str(tmp_path))
    assert (code, out, err) == (0, "", "no pools available to import\n")
    out = ok(capsys, "pool", "import", "-d", str(tmp_path), "-D")
    assert "  pool: tank\n" in out and " state: ONLINE (DESTROYED)\n" in out and d[1] in out
    code, out, err = run(capsys, "pool", "import", "-d", str(tmp_path), "tank")
    assert code == 1 and err == "cannot import 'tank': no such pool available\n"
    ok(capsys, "pool", "import", "-d", str(tmp_path), "-D", "-f", "tank")
    assert ok(capsys, "list", "-H", "-o", "name") == "tank\ntank/fs\n"
    ok(capsys, "pool", "export", "tank")
    assert run(capsys, "pool", "import", "-d", str(tmp_path), "-D")[2] == \
        "no pools available to import\n"                 # exported is not destroyed
    code, out, err = run(capsys, "pool", "import", "-d", str(tmp_path), "-a", "tank")
    assert code == 2 and err.startswith("too many arguments\nusage:\n")
    ok(capsys, "pool", "import", "-d", str(tmp_path), "-s", "tank")
    check_pools()


def test_bootfs_names_a_filesystem_of_the_pool(tmp_path, monkeypatch, capsys):
    """zpool set bootfs=...: a valid name in this pool (bootfs_name_valid), of a filesystem
    that exists (the kernel's hold), or empty (zpool_set_002_neg)."""
    d = pool_files(tmp_path, monkeypatch, 2)
    ok(capsys, "pool", "create", "boot", d[0])
    ok(capsys, "pool", "create", "other", d[1])
    ok(capsys, "create", "boot/root")
    ok(capsys, "create", "-V", "8M", "boot/vol")
    for value, why in (("boot/123", "no such pool or dataset"),
                       ("boot@val", "'boot@val' is an invalid name"),
                       ("boot/vol", "operation not supported on this type of pool"),
                       ("other/x", "'other/x' is an invalid name"),
                       ("boot/a%d%s", "'boot/a%d%s' is an invalid name")):
        code, out, err = run(capsys, "pool", "set", f"bootfs={value}", "boot")
        assert code == 1 and err == f"cannot set property for 'boot': {why}\n", value
    ok(capsys, "pool", "set", "bootfs=boot/root", "boot")
    assert ok(capsys, "pool", "get", "-H", "-o", "value", "bootfs", "boot") == "boot/root\n"
    ok(capsys, "pool", "set", "bootfs=", "boot")
    check_pools()


def test_a_set_that_outgrows_the_record_is_refused_before_anything_changes(
        tmp_path, monkeypatch, capsys):
    """A dataset's properties live in one 8 KiB record: a user property set that would
    outgrow it fails with E2BIG up front, the dataset keeps what it had, and later commands
    work (the commit used to fail and every later command with it: user_property_001_pos)."""
    disk, = pool_files(tmp_path, monkeypatch, 1)
    ok(capsys, "pool", "create", "tank", disk)
    ok(capsys, "set", "u:a=" + "a" * 3000, "tank")
    ok(capsys, "set", "u:b=" + "b" * 3000, "tank")
    code, out, err = run(capsys, "set", "u:c=" + "c" * 3000, "tank")
    assert code == 1 and err == ("cannot set property for 'tank': property list too large: "
                                 "fusezfs keeps a dataset's properties in 8192 bytes\n")
    assert ok(capsys, "get", "-H", "-o", "value", "u:c", "tank") == "-\n"
    ok(capsys, "snapshot", "tank@s")
    ok(capsys, "create", "tank/fs")
    ok(capsys, "set", "u:a=short", "tank")               # smaller: fine
    assert ok(capsys, "get", "-H", "-o", "value", "u:a", "tank") == "short\n"
    check_pools()
