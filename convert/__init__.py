"""The offline build stage: models folder -> plan -> members -> ensemble graph -> parity gate -> artifacts/.

Needs the `[convert]` extra (torch, onnx, scikit-learn, skl2onnx, onnxmltools, xgboost, lightgbm, catboost).
Importing this package imports none of them; the modules that need them import them.
"""

__version__ = "0.1.0"
