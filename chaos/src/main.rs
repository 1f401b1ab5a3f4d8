//! `cicada-chaos run | check`: see the crate's documentation and README "Chaos".

fn main() {
    eprintln!("cicada-chaos: not wired yet");
    std::process::exit(2);
}
