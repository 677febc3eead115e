fn main() {
    eprintln!("xcord-loadtest: not yet built");
    std::process::exit(2);
}
