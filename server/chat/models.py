"""The models a conversation may choose (GET /api/models, PATCH's check): CHAT_MODELS when set,
else the backend's own list, asked at most every CHAT_MODELS_CACHE_S and never more than once at
a time. The default model is always in it, so a conversation can always go back to it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from server.chat.backends import Backend, BackendError
from server.config import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 30.0


@dataclass(frozen=True, slots=True)
class Models:
    ids: list[str]
    default: str


class ModelCatalog:
    def __init__(self, backend: Backend, settings: Settings):
        self.backend = backend
        self.pinned = list(dict.fromkeys(settings.models))
        if self.pinned:
            default = backend.default_model if backend.default_model in self.pinned else self.pinned[0]
        else:
            default = backend.default_model
        self.default = default
        self.cache_s = settings.models_cache_s
        self._listed: list[str] | None = None
        self._fresh_until = 0.0
        self._lock = asyncio.Lock()

    async def models(self) -> Models:
        if self.pinned:
            return Models(self.pinned, self.default)
        async with self._lock:  # a burst of requests asks the backend once
            if time.monotonic() >= self._fresh_until:
                await self._refresh()
        listed = self._listed or []
        return Models(sorted({self.default, *listed}), self.default)

    async def _refresh(self) -> None:
        try:
            self._listed = await self.backend.list_models()
            self._fresh_until = time.monotonic() + self.cache_s
        except BackendError as e:
            # The last list stays (or the default alone): choosing a model must not fail with the backend.
            log.warning("could not list the backend's models (%s); keeping %d known", e, len(self._listed or []))
            self._fresh_until = time.monotonic() + min(self.cache_s, RETRY_AFTER_FAILURE_S)
        except Exception:
            log.exception("listing the backend's models failed")
            self._fresh_until = time.monotonic() + min(self.cache_s, RETRY_AFTER_FAILURE_S)
