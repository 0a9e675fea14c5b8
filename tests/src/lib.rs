//! Helpers shared by the end-to-end tests: locating the built binaries, building a busybox rootfs.
