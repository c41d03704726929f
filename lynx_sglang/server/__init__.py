"""Code that runs inside SGLang's HTTP launcher process: the `/lynx/*` routes, request checks, metrics."""
