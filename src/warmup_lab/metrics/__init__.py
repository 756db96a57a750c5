"""What a run measures besides its loss: early-phase loss windows and optimizer telemetry
(``jitter``), sharpness and the edge of stability (``curvature``). Definitions: docs/metrics.md."""
