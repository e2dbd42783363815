"""The artifact formats a student is exported to and measured in."""

from __future__ import annotations

FORMATS = ("tflite", "pte")
# Which runtime (a key of DeviceInfo.runtimes) runs each artifact format.
RUNTIME_OF_FORMAT = {"tflite": "litert", "pte": "executorch"}
