"""One-off studies and the backfill demo's benchmark: run from a clone (`python -m benchmarks.NAME`), not shipped
in the wheel. Each imports only public functions of `convert` and `runtime`; README.md says what each studies."""
