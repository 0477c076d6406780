"""Monitoring built on the serving core: build comparison, evaluation against realised labels, the drift
report's text and the HTML pages of the `compare`, `drift` and `evaluate` commands. Not loaded by
`import runtime`."""
