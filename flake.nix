{
  description = "roomplan: multi-view 3D scene reasoning for a language model (VGGT + Perceiver + Qwen3/LoRA), prep and training in Rust";

  # flake.lock pins this branch to rev cf5e76507c6e23b59f7e0ffcc7baa2a39ddd8442 (narHash
  # sha256-F+b8u43BVF5DlM0pz7JQSbtbwKy5PrHIT5zQUekXsD0=, 2026-09-27), an entry taken from the public
  # lock file github.com/Chomiam/noos-nas flake.lock at commit 01d589abb4cde06956be05e9f2fbab7504fae35d.
  # That revision's rustc is 1.95.0 (sources in ci/nix-stub/pin.json); `toolchain` below refuses any
  # rustc older than Cargo.toml's rust-version. Move the pin with `nix flake update`, then update pin.json.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      lib = nixpkgs.lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = lib.genAttrs systems;

      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
      rustVersion = cargoToml.workspace.package.rust-version;

      # Every binary of the workspace, and the app name that runs it (`train` is roomplan-trainer's).
      binaries = [ "synth" "tools" "prep-scanqa" "prep-sqa3d" "prep-arkit" "train" ];

      # CPU: nixpkgs' own package set, default config (unfree packages refused).
      cpuPkgs = system: nixpkgs.legacyPackages.${system};
      # CUDA: the only package set with unfree allowed (the CUDA toolkit is unfree).
      cudaPkgs = system: import nixpkgs {
        inherit system;
        config = { allowUnfree = true; cudaSupport = true; };
      };

      # One compiler for the package, the check and the devShell: the pinned nixpkgs' rustc, refused
      # at evaluation time if older than the workspace's rust-version.
      toolchain = pkgs:
        if builtins.compareVersions pkgs.rustc.version rustVersion < 0
        then throw "roomplan: nixpkgs' rustc ${pkgs.rustc.version} is older than the workspace's rust-version ${rustVersion} (Cargo.toml); pin a newer nixpkgs"
        else {
          inherit (pkgs) rustc cargo clippy rustfmt;
          rustPlatform = pkgs.makeRustPlatform { inherit (pkgs) rustc cargo; };
        };

      # Tests: the checks output runs every test but those reading ../shared (not part of the
      # source), which ci/shared_tests.json lists and CI runs (ci/test_selection.py).
      needsShared = builtins.fromJSON (builtins.readFile ./ci/shared_tests.json);
      # Integration test targets as cargo finds them: <member>/tests/<name>.rs and <member>/tests/<name>/main.rs.
      testTargets = builtins.concatMap
        (member:
          let dir = ./. + "/${member}/tests";
              entries = if builtins.pathExists dir then builtins.readDir dir else { };
          in builtins.concatMap
            (n:
              if entries.${n} == "regular" && lib.hasSuffix ".rs" n then [ (lib.removeSuffix ".rs" n) ]
              else if entries.${n} == "directory" && builtins.pathExists (dir + "/${n}/main.rs") then [ n ]
              else [ ])
            (builtins.attrNames entries))
        cargoToml.workspace.members;
      testsWithoutShared = builtins.sort builtins.lessThan
        (builtins.filter (t: !(builtins.elem t needsShared.test_targets)) testTargets);

      mkRoomplan = { pkgs, cuda ? false, tests ? false }:
        (toolchain pkgs).rustPlatform.buildRustPackage {
          pname = if tests then "roomplan-tests" else if cuda then "roomplan-cuda" else "roomplan";
          version = cargoToml.workspace.package.version;
          src = lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # tokenizers' onig needs a C compiler (stdenv has one); turbojpeg-sys builds libjpeg-turbo
          # from its bundled source with cmake and nasm (its SIMD); cuda needs nvcc and the driver
          # API at link time.
          nativeBuildInputs = [ pkgs.pkg-config pkgs.cmake pkgs.nasm ]
            ++ lib.optionals cuda [ pkgs.cudaPackages.cuda_nvcc ];
          # cmake is for turbojpeg-sys's build script only: not cmake's configure phase of the workspace.
          dontUseCmakeConfigure = true;
          # nccl: the cuda feature turns on candle-core/nccl (data-parallel all-reduce).
          buildInputs = lib.optionals cuda [ pkgs.cudaPackages.cuda_cudart pkgs.cudaPackages.libcublas pkgs.cudaPackages.libcurand pkgs.cudaPackages.nccl ];
          buildFeatures = lib.optionals cuda [ "roomplan-trainer/cuda" ];
          doCheck = tests;
          cargoTestFlags = [ "--workspace" "--lib" "--bins" ]
            ++ builtins.concatMap (t: [ "--test" t ]) testsWithoutShared;
          checkFlags = [ "--exact" ] ++ builtins.concatMap (t: [ "--skip" t ]) (builtins.sort builtins.lessThan needsShared.unit_tests);
          INSTA_UPDATE = "no";
          meta.mainProgram = "tools";
        };
    in
    {
      packages = forAllSystems (system: rec {
        roomplan = mkRoomplan { pkgs = cpuPkgs system; };
        roomplan-cuda = mkRoomplan { pkgs = cudaPkgs system; cuda = true; };
        default = roomplan;
      });

      # `nix run .#<binary> -- <args>`, e.g. `nix run .#train -- stage3` (CPU build).
      apps = forAllSystems (system:
        let pkg = self.packages.${system}.roomplan;
        in lib.genAttrs binaries (bin: {
          type = "app";
          program = "${pkg}/bin/${bin}";
        }));

      # `nix flake check` / `nix build .#checks.<system>.workspace-tests`: builds the workspace and runs
      # its tests except those that read ../shared.
      checks = forAllSystems (system: {
        workspace-tests = mkRoomplan { pkgs = cpuPkgs system; tests = true; };
      });

      devShells = forAllSystems (system:
        let pkgs = cpuPkgs system; tc = toolchain pkgs;
        in {
          default = pkgs.mkShell {
            packages = [ tc.rustc tc.cargo tc.clippy tc.rustfmt pkgs.cargo-nextest pkgs.pkg-config pkgs.cmake pkgs.nasm
                         (pkgs.python3.withPackages (ps: [ ps.pyarrow ])) ];
          };
        });
    };
}
