# The stand-in package set. Every derivation records the config of the package set that made it
# (passthru.nixpkgsConfig), so the check can tell which outputs were built with unfree allowed.
{ system, config }:
let
  pin = builtins.fromJSON (builtins.readFile ./pin.json);
  drv = name: extra: { type = "derivation"; inherit name; outPath = "/nix/store/stub-${name}"; } // extra;
  # Like nixpkgs' meta check: an unfree package refuses to evaluate unless config.allowUnfree.
  unfree = name:
    if config.allowUnfree or false then drv name { meta.license = "unfree"; }
    else throw "stub nixpkgs: Package ‘${name}’ has an unfree license, refusing to evaluate (config.allowUnfree is not set)";
  tool = name: drv name { };
in rec {
  inherit system config;
  # The pinned revision's compiler version, recorded in pin.json (see there for the sources).
  rustc = drv "rustc-${pin.rustc}" { version = pin.rustc; };
  cargo = drv "cargo-${pin.rustc}" { version = pin.rustc; };
  clippy = tool "clippy"; rustfmt = tool "rustfmt"; cargo-nextest = tool "cargo-nextest";
  pkg-config = tool "pkg-config"; cmake = tool "cmake"; nasm = tool "nasm";
  python3 = { withPackages = f: drv "python3-env" { packages = f { pyarrow = tool "pyarrow"; }; }; };
  cudaPackages = {
    cuda_nvcc = unfree "cuda_nvcc"; cuda_cudart = unfree "cuda_cudart";
    libcublas = unfree "libcublas"; libcurand = unfree "libcurand"; nccl = unfree "nccl";
  };
  mkShell = args: drv "shell" { passthru = args // { nixpkgsConfig = config; }; };
  makeRustPlatform = { rustc, cargo, ... }: {
    buildRustPackage = args: drv args.pname {
      name = "${args.pname}-${args.version}";
      passthru = args // { nixpkgsConfig = config; toolchain = { rustc = rustc.name; cargo = cargo.name; }; };
    };
  };
  rustPlatform = makeRustPlatform { inherit rustc cargo; };
}
