# tailpass itself: the Rust crate, linking the prebuilt Go archive.
{
  lib,
  rustPlatform,
  pkg-config,
  removeReferencesTo,
  tsshim,
}:

let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "tailpass";
  inherit (cargoToml.package) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../build.rs # stamps the commit (TAILPASS_COMMIT, else `unknown` without .git)
      ../src
      ../benches # Cargo.toml declares [[bench]] targets
      ../tests
      ../crates # workspace members: crates/tailnet (the FFI and its build.rs) and the dev-only test kit (Cargo must see every member)
      ../README.md # src/config/tests.rs includes it
      ../vendor/tsshim/capi/tsshim.h # bindgen's input
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # bindgenHook: LIBCLANG_PATH and the C compiler's include paths for bindgen.
  nativeBuildInputs = [
    rustPlatform.bindgenHook
    pkg-config
    removeReferencesTo
  ];

  # crates/tailnet/build.rs links this archive instead of running `go build`.
  env.TAILPASS_TSSHIM_LIB_DIR = "${tsshim}/lib";

  # The tests need a test tailnet (vendor/tsshim/cmd/testnet), Node and
  # Chromium: scripts/test runs them.
  doCheck = false;

  # Keep Go out of the runtime closure whatever the archive's debug info said.
  postFixup = ''
    remove-references-to -t ${tsshim.go} $out/bin/tailpass
  '';

  passthru = { inherit tsshim; };

  meta = {
    inherit (cargoToml.package) description;
    license = with lib.licenses; [ mit asl20 ];
    mainProgram = "tailpass";
    platforms = lib.platforms.linux;
  };
}
