"""Zero-shot query likelihood (UPR-style): the hard prompt and no hints; nothing to train."""

from __future__ import annotations

from qpeft.adapters.base import Adapter


class ZeroShot(Adapter):
    method = "zero_shot"
