# A stand-in for nixpkgs, used only by ci/flake_check.sh: nixpkgs cannot be fetched offline, so this
# provides just the attributes our flake touches, returning plain attribute sets that record their
# arguments. It lets CI evaluate every output of flake.nix and assert on its structure.
{
  outputs = { self }:
    let
      genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
      stubPkgs = system: rec {
        inherit system;
        pkg-config = { name = "pkg-config"; };
        cargo = { name = "cargo"; }; rustc = { name = "rustc"; }; clippy = { name = "clippy"; };
        rustfmt = { name = "rustfmt"; }; cargo-nextest = { name = "cargo-nextest"; };
        python3 = { withPackages = f: { name = "python3-env"; packages = f { pyarrow = "pyarrow"; }; }; };
        cudaPackages = { cuda_nvcc = "cuda_nvcc"; cuda_cudart = "cuda_cudart"; libcublas = "libcublas"; libcurand = "libcurand"; };
        mkShell = args: { type = "derivation"; outPath = "/nix/store/stub-shell"; passthru = args; };
        rustPlatform.buildRustPackage = args: {
          type = "derivation";
          name = "${args.pname}-${args.version}";
          outPath = "/nix/store/stub-${args.pname}";
          passthru = args;
        };
      };
    in {
      lib = {
        inherit genAttrs;
        optionals = cond: xs: if cond then xs else [ ];
        cleanSource = src: src;
      };
      legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] stubPkgs;
    };
}
