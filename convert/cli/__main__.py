"""`python -m convert.cli`: the same command line as `ensemble-onnx`."""

from . import main

main()
