"""senti: keep a Chinese sentiment classifier trained, validated, versioned and served."""

import os

# TensorFlow prints pages of start-up logs; keep them out of pipeline output unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
