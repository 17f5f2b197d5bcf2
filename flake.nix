{
  description = "tailpass: passkey single sign-on for private web services on a Tailscale network, in one binary";

  # No flake.lock is committed yet (it could not be produced where this was
  # written): the first `nix build` / `nix flake lock` pins nixpkgs. See
  # docs/release.md, "Nix", for what has not been checked.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = (lib.importTOML ./Cargo.toml).package.version;

      # vendor/tsshim/go.mod says `go 1.26`, and buildGoModule sets
      # GOTOOLCHAIN=local, so the Go toolchain must be 1.26 or newer.
      buildGoModuleFor = pkgs: pkgs.buildGo126Module or pkgs.buildGoModule;
      goFor = pkgs: pkgs.go_1_26 or pkgs.go;

      packagesFor =
        pkgs:
        let
          tsshim = pkgs.callPackage ./nix/tsshim.nix {
            buildGoModule = buildGoModuleFor pkgs;
            inherit version;
          };
          tailpass = pkgs.callPackage ./nix/package.nix { inherit tsshim; };
        in
        {
          inherit tsshim tailpass;
          default = tailpass;
        };
    in
    {
      packages = forAllSystems packagesFor;

      overlays.default = final: _prev: { tailpass = (packagesFor final).tailpass; };

      nixosModules.default = import ./nix/module.nix { inherit self; };
      nixosModules.tailpass = self.nixosModules.default;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # bindgenHook: the C compiler's include paths for bindgen (stdint.h).
          nativeBuildInputs = [ pkgs.rustPlatform.bindgenHook ];
          packages = [
            (goFor pkgs)
            pkgs.rustc
            pkgs.cargo
            pkgs.clippy
            pkgs.rustfmt
            pkgs.llvmPackages.libclang
            # tests/idp (oidc-provider) wants Node >= 18. CI uses Debian's
            # Node 20; nodejs_20 is past end of life (April 2026), and
            # nixpkgs marks such releases insecure and then drops them, so
            # this takes nixpkgs' current LTS.
            pkgs.nodejs
            pkgs.chromium
            # tests/hosts.rs: the shared session store.
            pkgs.redis
            pkgs.pkg-config
          ];
          LIBCLANG_PATH = "${pkgs.llvmPackages.libclang.lib}/lib";
        };
      });
    };
}
