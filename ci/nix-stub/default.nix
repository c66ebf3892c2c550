# `import nixpkgs { system = ...; config = { ... }; }` on the stand-in (see flake.nix).
{ system, config ? { }, overlays ? [ ], ... }:
import ./pkgs.nix { inherit system config; }
