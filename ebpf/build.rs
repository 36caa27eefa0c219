//! Fails early with a clear message when bpf-linker is missing, and tells cargo to
//! relink when it changes.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => panic!("bpf-linker not found on PATH: run `cargo xtask setup` (or `cargo xtask run`) to install it"),
    }
}
