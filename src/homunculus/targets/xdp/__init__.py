"""The eBPF/XDP backend: a verifier-safe XDP program whose model parameters live in BPF maps."""
