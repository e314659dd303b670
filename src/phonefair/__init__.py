"""phonefair: phone-level random vs systematic error of self-supervised speech encoders, per speaker group."""

from __future__ import annotations

__version__ = "0.1.0"
