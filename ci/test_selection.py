#!/usr/bin/env python3
"""Which tests need the shared fixtures (../shared), from ci/shared_tests.json, and the cargo
arguments that follow from it. The flake's Nix check (checks.<system>.workspace-tests) runs every
test but those; CI runs both halves, so the whole suite still runs exactly once.

  check               static consistency: the listed test targets are exactly the targets whose files
                      read ROOMPLAN_SHARED / shared_dir(); target names are unique; every listed unit
                      test exists and every src/ test module that reads the fixtures is listed
  nix-args            JSON {cargoTestFlags, checkFlags}: what the flake's check must pass to cargo test
  run-without-shared  cargo test with those arguments and ROOMPLAN_SHARED pointing at a missing folder:
                      proves the Nix check's tests need no ../shared
  run-shared          the rest (CI only): the listed targets, the listed unit tests (each must run and
                      pass), and the doc tests
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READS_SHARED = re.compile(r"ROOMPLAN_SHARED|shared_dir\(\)")
ABSENT_SHARED = "/nonexistent/roomplan-shared-is-absent"


def listed():
    data = json.loads((ROOT / "ci/shared_tests.json").read_text())
    return sorted(data["test_targets"]), sorted(data["unit_tests"])


def metadata():
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def test_targets(meta):
    """(package, target name, source file) of every integration test target."""
    return [
        (p["name"], t["name"], Path(t["src_path"]))
        for p in meta["packages"]
        for t in p["targets"]
        if "test" in t["kind"]
    ]


def target_text(src):
    """A test target's file plus the tests/<mod> modules it declares (shared helpers live there)."""
    text = src.read_text()
    for m in re.finditer(r"^\s*mod\s+(\w+)\s*;", text, re.M):
        for cand in (src.parent / f"{m[1]}.rs", src.parent / m[1] / "mod.rs"):
            if cand.is_file():
                text += cand.read_text()
    return text


def shared_unit_tests(meta):
    """Unit tests (src/, after #[cfg(test)]) that read the fixtures: a #[test] fn whose body mentions
    ROOMPLAN_SHARED / shared_dir() or calls a fn of its file that does (to a fixpoint). Named by their
    libtest path, <module path>::tests::<fn>."""
    found = set()
    for p in meta["packages"]:
        src = Path(p["manifest_path"]).parent / "src"
        for f in sorted(src.rglob("*.rs")):
            text = f.read_text()
            at = text.find("#[cfg(test)]")
            if at < 0:
                continue
            body = text[at:]
            starts = [(m.start(), m[1]) for m in re.finditer(r"\bfn\s+(\w+)", body)]
            chunks = {name: body[s:(starts[i + 1][0] if i + 1 < len(starts) else len(body))]
                      for i, (s, name) in enumerate(starts)}
            # a #[test] fn: the attribute sits between the previous item's end and the fn
            tests = {name for s, name in starts
                     if "#[test]" in re.split(r"[;}]", body[max(0, s - 300):s])[-1]}
            reads = {n for n, c in chunks.items() if READS_SHARED.search(c)}
            while True:
                more = {n for n, c in chunks.items() if n not in reads
                        and any(re.search(rf"\b{r}\(", c) for r in reads)}
                if not more:
                    break
                reads |= more
            rel = f.relative_to(src).with_suffix("").parts
            if rel[0] == "bin":  # src/bin/<name>.rs or src/bin/<name>/...: the root of a binary crate
                rel = rel[2:]
            parts = [x for x in rel if x not in ("lib", "main", "mod")]
            prefix = "::".join(parts + ["tests"])
            found |= {f"{prefix}::{n}" for n in tests & reads}
    return found


def nix_args(meta):
    shared_targets, unit = listed()
    run = sorted(n for _, n, _ in test_targets(meta) if n not in shared_targets)
    flags = ["--workspace", "--lib", "--bins"]
    for name in run:
        flags += ["--test", name]
    check = ["--exact"]
    for name in unit:
        check += ["--skip", name]
    return {"cargoTestFlags": flags, "checkFlags": check}


def check(meta):
    shared_targets, unit = listed()
    problems = []
    targets = test_targets(meta)
    names = [n for _, n, _ in targets]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        problems.append(f"test target names used by more than one crate (cargo --test is ambiguous): {dups}")
    found = sorted(n for _, n, src in targets if READS_SHARED.search(target_text(src)))
    if found != shared_targets:
        problems.append(
            f"test targets reading the shared fixtures {found} != ci/shared_tests.json test_targets {shared_targets}"
        )
    found_unit = sorted(shared_unit_tests(meta))
    if found_unit != unit:
        problems.append(
            f"unit tests reading the shared fixtures {found_unit} != ci/shared_tests.json unit_tests {unit}"
        )
    if problems:
        print("test selection FAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"test selection: {len(shared_targets)} of {len(targets)} test targets and "
          f"{len(unit)} unit tests read ../shared; the Nix check runs the rest")


def cargo_test(args, env=None):
    """Run cargo test, echoing its output; return the names of the tests that passed."""
    cmd = ["cargo", "test", "--workspace", "--locked"] + args
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    passed = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        m = re.match(r"test (\S+) \.\.\. ok$", line.rstrip())
        if m:
            passed.append(m[1])
    if proc.wait() != 0:
        sys.exit(f"error: {' '.join(cmd)} failed")
    return passed


def run_without_shared(meta):
    a = nix_args(meta)
    flags = [f for f in a["cargoTestFlags"] if f != "--workspace"]
    passed = cargo_test(flags + ["--"] + a["checkFlags"], env={"ROOMPLAN_SHARED": ABSENT_SHARED})
    _, unit = listed()
    ran = sorted(set(passed) & set(unit))
    if ran or not passed:
        sys.exit(f"error: the no-shared run passed {len(passed)} tests, including skipped ones {ran}")
    print(f"no-shared run: {len(passed)} tests passed with ROOMPLAN_SHARED={ABSENT_SHARED}")


def run_shared():
    shared_targets, unit = listed()
    cargo_test([a for t in shared_targets for a in ("--test", t)])
    passed = cargo_test(["--lib", "--bins", "--", "--exact"] + unit)
    if sorted(passed) != unit:
        sys.exit(f"error: the listed unit tests {unit} did not all run and pass (passed: {sorted(passed)})")
    cargo_test(["--doc"])


def main():
    cmd = sys.argv[1] if len(sys.argv) == 2 else ""
    if cmd == "check":
        check(metadata())
    elif cmd == "nix-args":
        print(json.dumps(nix_args(metadata())))
    elif cmd == "run-without-shared":
        run_without_shared(metadata())
    elif cmd == "run-shared":
        run_shared()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
