"""akd-mobile: architecture-aware knowledge distillation under a measured latency budget."""

from __future__ import annotations

__version__ = "0.1.0"
