//! `cairn-metaserver`: not built yet.

fn main() {
    eprintln!("cairn-metaserver is not built yet: it arrives with the metaserver issue");
    std::process::exit(2);
}
