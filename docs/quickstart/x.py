# The quick start's example job: what a program sees inside a jobworker job.
import os
import socket

print(f"hello from {socket.gethostname()}: pid {os.getpid()}, uid {os.getuid()}")
procs = [p for p in os.listdir("/proc") if p.isdigit()]
print(f"processes I can see: {len(procs)}")
for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
        with open(limit) as f:
            print(f"memory limit: {int(f.read()) // (1 << 20)} MiB")
        break
    except (OSError, ValueError):
        pass
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1)
    print("network: reachable")
except OSError as e:
    print(f"network: none ({e.strerror or e})")
