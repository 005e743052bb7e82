"""petalproto: peer-to-peer LLM inference over a written wire protocol.

``petalproto.core`` is the sans-IO protocol core, ``petalproto.net`` its trio shell.
"""

from __future__ import annotations

__version__ = "0.2.0"
__all__ = ["__version__"]
