"""Batch scoring built on the serving core: the `score` command's engines (in-process pool, Ray) and file I/O
(pyarrow), and the one writer of result files every command uses. Not loaded by `import runtime`."""
