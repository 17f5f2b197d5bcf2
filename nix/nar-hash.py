#!/usr/bin/env python3
"""Nix's recursive (NAR) hash of a path, without Nix.

    nix/nar-hash.py PATH           -> sha256-<base64>   (SRI, what Nix prints)
    nix/nar-hash.py --vendor       -> the flake's vendorHash for vendor/tsshim

A fixed-output derivation with `outputHashMode = "recursive"` (buildGoModule's
goModules, whose hash is `vendorHash`) is checked against sha256 over the NAR
serialization of its output. The NAR format (Eelco Dolstra's thesis, fig.
5.2; Nix's src/libutil/archive.cc):

    nar      = str("nix-archive-1") node
    node     = str("(") str("type") (regular | symlink | directory) str(")")
    regular  = str("regular") [str("executable") str("")] str("contents") str(bytes)
    symlink  = str("symlink") str("target") str(target)
    directory= str("directory") { str("entry") str("(") str("name") str(name)
                                  str("node") node str(")") }   # names sorted bytewise
    str(s)   = u64 little-endian len(s), s, zero padding to a multiple of 8

Only the executable bit of a file's mode is recorded; owners, times and
other permission bits are not.

`--vendor` mirrors buildGoModule's goModules derivation (nixpkgs
pkgs/build-support/go/module.nix, proxyVendor = false): `go mod vendor` in
the module root, then `cp -r vendor $out`, so $out is the vendor directory
itself (modules.txt included). `subPackages` does not change what is vendored:
`go mod vendor` takes every package the main module's packages and tests
import, for all platforms and build tags. Run it with the same Go minor
version as the flake's (go_1_26): modules.txt's layout belongs to the Go
version that writes it.
"""

import base64
import hashlib
import os
import stat
import subprocess
import sys
import tempfile


class _Sink:
    def __init__(self, h):
        self.h = h

    def raw(self, b):
        self.h.update(b)

    def str(self, s):
        if isinstance(s, str):
            s = s.encode()
        self.raw(len(s).to_bytes(8, "little"))
        self.raw(s)
        pad = (8 - len(s) % 8) % 8
        if pad:
            self.raw(b"\0" * pad)


def _node(out, path):
    st = os.lstat(path)
    out.str("(")
    out.str("type")
    if stat.S_ISLNK(st.st_mode):
        out.str("symlink")
        out.str("target")
        out.str(os.fsencode(os.readlink(path)))
    elif stat.S_ISREG(st.st_mode):
        out.str("regular")
        if st.st_mode & stat.S_IXUSR:
            out.str("executable")
            out.str("")
        out.str("contents")
        out.raw(st.st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                out.raw(chunk)
        pad = (8 - st.st_size % 8) % 8
        if pad:
            out.raw(b"\0" * pad)
    elif stat.S_ISDIR(st.st_mode):
        out.str("directory")
        for name in sorted(os.listdir(os.fsencode(path))):
            out.str("entry")
            out.str("(")
            out.str("name")
            out.str(name)
            out.str("node")
            _node(out, os.path.join(os.fsencode(path), name))
            out.str(")")
    else:
        raise SystemExit(f"{path}: not a file, directory or symlink")
    out.str(")")


def nar_sha256(path):
    """The raw sha256 digest of PATH's NAR serialization."""
    h = hashlib.sha256()
    out = _Sink(h)
    out.str("nix-archive-1")
    _node(out, path)
    return h.digest()


def nix32(digest):
    """Nix's base-32 (the `sha256:...` form of old hashes)."""
    chars = "0123456789abcdfghijklmnpqrsvwxyz"
    n = int.from_bytes(digest, "little")
    length = (len(digest) * 8 - 1) // 5 + 1
    return "".join(chars[(n >> (5 * i)) & 31] for i in reversed(range(length)))


def sri(digest):
    return "sha256-" + base64.b64encode(digest).decode()


def vendor_hash():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vendor", "tsshim")
    with tempfile.TemporaryDirectory() as tmp:
        vendor = os.path.join(tmp, "vendor")
        env = dict(os.environ, GO111MODULE="on", GOTOOLCHAIN="local", GOFLAGS="")
        subprocess.run(["go", "mod", "vendor", "-o", vendor], cwd=root, env=env, check=True)
        version = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
        print(f"# {version}; go mod vendor in vendor/tsshim", file=sys.stderr)
        return nar_sha256(vendor)


def main(argv):
    if argv == ["--vendor"]:
        digest = vendor_hash()
    elif len(argv) == 1 and not argv[0].startswith("-"):
        digest = nar_sha256(argv[0])
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    print(sri(digest))
    print(f"# sha256:{nix32(digest)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
