# The Go half of tailpass: vendor/tsshim/capi built as a C archive
# (libtsshim.a + its header), which the Rust build links through
# TAILPASS_TSSHIM_LIB_DIR instead of running Go itself.
{ lib, buildGoModule, version }:

buildGoModule {
  pname = "tailpass-tsshim";
  inherit version;

  src = lib.fileset.toSource {
    root = ../vendor/tsshim;
    fileset = ../vendor/tsshim;
  };

  # NAR hash of `go mod vendor` for vendor/tsshim (tailscale.com v1.94.1 and
  # its dependencies), the output of buildGoModule's goModules derivation.
  # Computed WITHOUT Nix by nix/nar-hash.py --vendor (Go 1.26.8); not yet
  # checked by a Nix build: docs/release.md, "Nix". Re-run that script after
  # any change to vendor/tsshim/go.mod or go.sum. If Nix reports a mismatch,
  # the "got:" value it prints is the right one.
  vendorHash = "sha256-kWlSgXuZLp0LPUSM1Bpg0JeoLngkcGA4O3504kSKce0=";

  # An intermediate artifact, not installed: cgo's C objects may carry Go
  # store paths in their debug info. -trimpath (which buildGoModule adds only
  # when this is false) is passed below; package.nix removes any reference
  # to Go left in the final binary.
  allowGoReference = true;

  buildPhase = ''
    runHook preBuild
    go build -trimpath -buildvcs=false -buildmode=c-archive -o libtsshim.a ./capi
    runHook postBuild
  '';

  installPhase = ''
    runHook preInstall
    install -Dm644 libtsshim.a $out/lib/libtsshim.a
    install -Dm644 libtsshim.h $out/include/libtsshim.h
    runHook postInstall
  '';

  # capi's tests run in scripts/test; cmd/testnet needs a test tailnet.
  doCheck = false;

  meta = {
    description = "tailpass's C archive over Tailscale's tsnet";
    license = with lib.licenses; [ mit asl20 ];
    platforms = lib.platforms.linux;
  };
}
