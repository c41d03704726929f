"""Code that runs inside SGLang's scheduler process, on the step path: step context, routing and
expert-compute hooks, device-side stats, the latency-budget controller."""
