"""Read-only dashboard, /metrics and /healthz, served by `deskgate serve`."""
