"""The dashboard (read-only but for the admin pages), /metrics and /healthz."""
