//! `cairn-chunkserver`: not built yet.

fn main() {
    eprintln!("cairn-chunkserver is not built yet: it arrives with the chunkserver issue");
    std::process::exit(2);
}
