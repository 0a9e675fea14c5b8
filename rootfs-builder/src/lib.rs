//! Minimal root filesystems: host executables with their library closure, and OCI image archives.
