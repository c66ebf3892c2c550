{
  description = "roomplan: multi-view 3D scene reasoning for a language model (VGGT + Perceiver + Qwen3/LoRA), prep and training in Rust";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Every binary of the workspace, and the app name that runs it.
      binaries = [ "synth" "tools" "prep-scanqa" "prep-sqa3d" "prep-arkit" ];

      mkRoomplan = pkgs: { cuda ? false }:
        pkgs.rustPlatform.buildRustPackage {
          pname = if cuda then "roomplan-cuda" else "roomplan";
          version = "0.1.0";
          src = nixpkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # tokenizers' onig needs a C compiler (stdenv has one); cuda needs nvcc and the driver API at link time.
          nativeBuildInputs = [ pkgs.pkg-config ]
            ++ nixpkgs.lib.optionals cuda [ pkgs.cudaPackages.cuda_nvcc ];
          buildInputs = nixpkgs.lib.optionals cuda [ pkgs.cudaPackages.cuda_cudart pkgs.cudaPackages.libcublas pkgs.cudaPackages.libcurand ];
          buildFeatures = nixpkgs.lib.optionals cuda [ "roomplan-trainer/cuda" ];
          # The test suite reads ../shared (parity fixtures) which is not part of the source tree.
          doCheck = false;
          meta.mainProgram = "tools";
        };
    in
    {
      packages = forAllSystems (pkgs: rec {
        roomplan = mkRoomplan pkgs { };
        roomplan-cuda = mkRoomplan pkgs { cuda = true; };
        default = roomplan;
      });

      apps = forAllSystems (pkgs:
        let pkg = self.packages.${pkgs.system}.roomplan;
        in nixpkgs.lib.genAttrs binaries (bin: {
          type = "app";
          program = "${pkg}/bin/${bin}";
        }));

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [ pkgs.cargo pkgs.rustc pkgs.clippy pkgs.rustfmt pkgs.cargo-nextest pkgs.pkg-config
                       (pkgs.python3.withPackages (ps: [ ps.pyarrow ])) ];
        };
      });
    };
}
