# A stand-in for nixpkgs, used only by ci/flake_check.sh: nixpkgs cannot be fetched offline, so this
# provides just what our flake touches, as plain attribute sets that record their arguments. It lets
# CI evaluate every output of flake.nix and assert on its structure. Like nixpkgs, it is both a flake
# (legacyPackages, lib) and an importable tree (`import nixpkgs { system; config; }`, ./default.nix).
{
  outputs = { self }: {
    lib = import ./lib.nix;
    # As in nixpkgs: legacyPackages.<system> is `import ./. { inherit system; }`, with the default
    # config, so unfree packages are refused.
    legacyPackages = self.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: import ./. { inherit system; });
  };
}
