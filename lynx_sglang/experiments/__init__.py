"""`lynx-sglang ab` and `lynx-sglang sweep`: accuracy and speed of expert-selection policies, measured
side by side on one server with paired statistics (see docs/ab-experiments.md)."""
