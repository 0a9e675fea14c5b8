fn main() {
    eprintln!("rootfs-builder: not built yet");
    std::process::exit(2);
}
