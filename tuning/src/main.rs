fn main() {
    eprintln!("xcord-tune: not yet built");
    std::process::exit(2);
}
