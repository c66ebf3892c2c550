fn main() {
    eprintln!("synth: under construction");
    std::process::exit(2);
}
