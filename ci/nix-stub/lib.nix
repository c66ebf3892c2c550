# The few nixpkgs lib functions our flake uses, with nixpkgs' semantics.
rec {
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  optionals = cond: xs: if cond then xs else [ ];
  cleanSource = src: src;
  hasSuffix = suffix: s:
    let ls = builtins.stringLength s; lx = builtins.stringLength suffix;
    in ls >= lx && builtins.substring (ls - lx) lx s == suffix;
  removeSuffix = suffix: s:
    if hasSuffix suffix s
    then builtins.substring 0 (builtins.stringLength s - builtins.stringLength suffix) s
    else s;
}
