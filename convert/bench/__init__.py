"""`ensemble-onnx bench`: the runtime against the original frameworks on this machine (`run`), measured in
worker processes (`workers`), reported as ratios, a table and a plot (`report`). Needs the build stack."""
