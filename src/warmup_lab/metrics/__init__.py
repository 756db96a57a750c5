"""What a run measures besides its loss: early-phase loss windows (``loss_windows``), what the
optimizer did (``optimizer_telemetry``), sharpness and the edge of stability (``curvature``).
Definitions: docs/metrics.md."""
